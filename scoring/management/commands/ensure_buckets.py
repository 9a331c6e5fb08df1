"""`manage.py ensure_buckets`: the set-up of an S3 server for Dropscore, run once."""

from django.core.management.base import BaseCommand

from scoring.packages import storage


class Command(BaseCommand):
    help = (
        "Make the models and scores buckets where they are missing, each with a lifecycle "
        "rule that aborts multipart uploads left unfinished (S3 died mid-upload)."
    )

    def handle(self, **options):
        for bucket, kept in storage.ensure_buckets().items():
            if kept:
                days = storage.ABORT_UNFINISHED_UPLOADS_DAYS
                self.stdout.write(
                    f"{bucket}: ready; unfinished uploads are aborted after {days} day"
                )
            else:
                self.stdout.write(
                    f"{bucket}: ready; the server did not keep the rule, unfinished uploads "
                    "are left to its own clean-up (MinIO: after 24 hours)"
                )
