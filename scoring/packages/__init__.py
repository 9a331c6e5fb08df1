"""Model packages: the format (contract), schedules, deploying and removing them, their
validation in a sandbox, their storage in S3 and the quotas on it.

The contract and the schedules import no Django: the sandbox reads packages with them."""
