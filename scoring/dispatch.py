"""What the minutely tick does: find due work in the database and send it out as batches.

The database, not the broker, is the record of what must run: a lost message, a
Redis restart or a killed worker delays a run, never loses it, because every
tick looks again at what is due, retrying, stale or queued too long.
"""

import logging
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from scoring import runs, schedules
from scoring.models import Batch, Deployment, ScoringRun

log = logging.getLogger(__name__)


def tick(now: datetime | None = None) -> Batch | None:
    """One batch of everything due now, or None when nothing is."""
    now = now or timezone.now()
    run_ids = due_schedules(now) + due_retries(now) + taken_back(now) + lost(now)
    return send_batch(run_ids, now) if run_ids else None


def due_schedules(now: datetime) -> list[int]:
    created = []
    for deployment in Deployment.objects.filter(status=Deployment.ACTIVE, next_run_at__lte=now):
        due_at = deployment.next_run_at
        following = schedules.next_runs(deployment.schedule, deployment.timezone, now)[0]
        # Claim this fire time: only the tick that moves next_run_at on creates the run.
        if not Deployment.objects.filter(id=deployment.id, next_run_at=due_at).update(
            next_run_at=following
        ):
            continue
        version = runs.current_version(deployment)
        if version is None:
            log.info("%s is due but has no valid version; skipped", deployment)
            continue
        day = due_at.astimezone(ZoneInfo(deployment.timezone)).date()
        run = runs.create_run(deployment, version, day, ScoringRun.SCHEDULE)
        if run is not None:
            created.append(run.id)
    return created


def due_retries(now: datetime) -> list[int]:
    due = ScoringRun.objects.filter(status=ScoringRun.RETRYING, next_attempt_at__lte=now)
    return claim_each(due, status=ScoringRun.QUEUED, queued_at=now)


def taken_back(now: datetime) -> list[int]:
    stale_before = now - timedelta(seconds=settings.RUN_LEASE_SECONDS)
    stale = ScoringRun.objects.filter(
        status=ScoringRun.RUNNING, heartbeat_at__lt=stale_before
    ).select_related("deployment", "version")
    return [run.id for run in stale if runs.take_back(run, now)]


def lost(now: datetime) -> list[int]:
    """Queued runs no worker took in time: their message was lost (or the queue is long)."""
    before = now - timedelta(seconds=settings.REQUEUE_AFTER_SECONDS)
    return claim_each(
        ScoringRun.objects.filter(status=ScoringRun.QUEUED, queued_at__lt=before), queued_at=now
    )


def claim_each(candidates, **changes) -> list[int]:
    """The runs whose conditional update this tick wins: another tick may take some first."""
    ids = list(candidates.values_list("id", flat=True))
    return [run_id for run_id in ids if candidates.filter(id=run_id).update(**changes)]


def score_now(deployment: Deployment, day: date | None = None) -> ScoringRun:
    """Queue the run of `day` (default: today in the deployment's time zone) and send it at once."""
    day = day or timezone.now().astimezone(ZoneInfo(deployment.timezone)).date()
    run = runs.request_run(deployment, day)
    if run.status == ScoringRun.QUEUED:
        send_batch([run.id])
    return run


def send_batch(run_ids: list[int], now: datetime | None = None) -> Batch:
    """Group runs in a new batch and enqueue it once the rows are committed."""
    from scoring.tasks import run_batch

    with transaction.atomic():
        batch = Batch.objects.create()
        ScoringRun.objects.filter(id__in=run_ids).update(
            batch=batch, queued_at=now or timezone.now()
        )

        def enqueue():
            try:
                run_batch.delay(batch.id)
            except Exception:  # broker down: the runs stay queued and a later tick sends them
                log.exception("could not enqueue batch %s; a later tick will", batch.id)

        transaction.on_commit(enqueue)
    return batch
