"""One set of factories for the tests: the cast of users and their API clients and sessions,
feature data, model packages (good and bad), the contract tests' small package, runs
with their quality results, and a real LDAP directory (slapd) of people and groups."""
