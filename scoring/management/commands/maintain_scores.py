"""`manage.py maintain_scores`: the scores table's daily maintenance, run by hand."""

from django.core.management.base import BaseCommand

from scoring.engine import maintenance


class Command(BaseCommand):
    help = (
        "Remove the partitions of models deleted more than DELETED_SCORES_RETENTION_DAYS "
        "ago, compact the scores table's small files, vacuum the files no version references "
        "older than SCORES_RETENTION_HOURS, write a checkpoint and clean up expired log "
        "entries: what beat's maintain_scores_table does every day."
    )

    def handle(self, **options):
        self.stdout.write(maintenance.maintain().summary())
