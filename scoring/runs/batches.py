"""A batch closes once none of its runs is at work (a run is, until its scores are
committed and checked), and each owner then gets the report of their runs in it: exactly
once, whichever worker (or tick) gets there last.

Its units may be scored by many workers; a worker that dies leaves its runs to tick, which
takes them back into a new batch, and then closes the old batch for the runs that did
finish in it, so their owners are still told.
"""

from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from scoring.models import Batch, BatchPart, ScoringRun
from scoring.reports import content, mail

AT_WORK = [ScoringRun.Status.QUEUED, ScoringRun.Status.RUNNING]
UNITS_AT_WORK = [BatchPart.Status.QUEUED, BatchPart.Status.RUNNING]


def finish_if_done(batch_id: int) -> bool:
    """Close the batch and send its reports if none of its runs is at work; True if this
    call closed it."""
    if ScoringRun.objects.filter(batch_id=batch_id, status__in=AT_WORK).exists():
        return False
    if not Batch.objects.filter(id=batch_id, finished_at__isnull=True).update(
        finished_at=timezone.now()
    ):
        return False  # another worker closed it
    # Units still marked at work have no run left: their worker died.
    BatchPart.objects.filter(batch_id=batch_id, status__in=UNITS_AT_WORK).update(
        status=BatchPart.Status.ABANDONED
    )
    for report in content.build_reports(Batch.objects.get(id=batch_id)):
        mail.send_report(report)  # a mail server that is down: tick sends it later
    return True


def close_finished(now: datetime) -> list[int]:
    """Batches begun whose runs are all done or gone, yet never closed (their last unit's
    worker died): closed now. A worker closes its batch right after its last run; tick
    leaves it a lease's time to do so."""
    quiet_since = now - timedelta(seconds=settings.RUN_LEASE_SECONDS)
    open_ = Batch.objects.filter(finished_at__isnull=True, started_at__lt=quiet_since)
    idle = (
        open_.exclude(runs__status__in=AT_WORK)
        .exclude(runs__finished_at__gte=quiet_since)
        .values_list("id", flat=True)
    )
    return [batch_id for batch_id in idle if finish_if_done(batch_id)]
