"""What the minutely tick does: find due work in the database and send it out as batches.

The database, not the broker, is the record of what must run: a lost message, a
Redis restart or a killed worker delays a run, never loses it, because every
tick looks again at what is due, retrying, stale or queued too long.
"""

import logging
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from scoring import enqueue
from scoring.models import Batch, BatchPart, Deployment, PackageVersion, Role, ScoringRun
from scoring.packages import roles, schedules
from scoring.runs import batches, lifecycle

log = logging.getLogger(__name__)
BULK_ROWS = 1000  # rows per INSERT or UPDATE when many models are due at once


def tick(now: datetime | None = None) -> Batch | None:
    """One batch of everything due now, or None when nothing is."""
    now = now or timezone.now()
    run_ids = due_schedules(now) + due_retries(now) + taken_back(now) + lost(now)
    batch = send_batch(run_ids, now) if run_ids else None
    resend_lost_units(now)
    batches.close_finished(now)
    return batch


def due_schedules(now: datetime) -> list[int]:
    """A run for each active deployment whose fire time has come, in a fixed number of
    queries however many are due: a thousand models on a daily schedule fire together."""
    with transaction.atomic():
        # Claim the fire times: rows another tick has locked are its own (skip, never wait),
        # and once next_run_at moves on no later tick sees them due.
        due = list(
            Deployment.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(status=Deployment.Status.ACTIVE, next_run_at__lte=now)
            .select_related("champion", "challenger")
        )
        due_at = {deployment.id: deployment.next_run_at for deployment in due}
        for deployment in due:
            deployment.next_run_at = schedules.next_runs(
                deployment.schedule, deployment.timezone, now
            )[0]
        Deployment.objects.bulk_update(due, ["next_run_at"], batch_size=BULK_ROWS)
        wanted = {}
        for deployment in due:
            scored = roles.scoring_versions(deployment)
            if not scored:
                log.info("%s is due but has no valid version; skipped", deployment)
            day = due_at[deployment.id].astimezone(ZoneInfo(deployment.timezone)).date()
            for version, role in scored:  # the challenger beside the champion, same batch
                wanted[(version.id, day)] = (deployment, version, role)
        return create_runs(wanted)


def create_runs(
    wanted: dict[tuple[int, date], tuple[Deployment, PackageVersion, str]],
) -> list[int]:
    """Scheduled runs for these (version, date)s, skipping those that exist (a score-now of
    the same date): at most one run per version and date, as the unique constraint says."""
    if not wanted:
        return []
    existing = set(
        ScoringRun.objects.filter(
            version_id__in={v for v, _ in wanted}, date__in={day for _, day in wanted}
        ).values_list("version_id", "date")
    )
    splits = roles.day_splits({(deployment, day) for (_, day), (deployment, *_) in wanted.items()})
    new = [
        ScoringRun(
            deployment=deployment,
            version=version,
            date=day,
            trigger=ScoringRun.Trigger.SCHEDULE,
            role=role,
            split_share=splits[(deployment.id, day)],
            max_attempts=lifecycle.max_attempts(version),
        )
        for (version_id, day), (deployment, version, role) in wanted.items()
        if (version_id, day) not in existing
    ]
    try:
        with transaction.atomic():
            return [run.id for run in ScoringRun.objects.bulk_create(new, batch_size=BULK_ROWS)]
    except IntegrityError:  # one was made since (a score-now): one at a time, skipping it
        made = [
            lifecycle.create_run(
                deployment,
                version,
                day,
                ScoringRun.Trigger.SCHEDULE,
                role=role,
                split_share=roles.day_split(deployment, day),
            )
            for (_, day), (deployment, version, role) in wanted.items()
        ]
        return [run.id for run in made if run is not None]


def due_retries(now: datetime) -> list[int]:
    due = ScoringRun.objects.filter(status=ScoringRun.Status.RETRYING, next_attempt_at__lte=now)
    ids = list(due.values_list("id", flat=True))
    return [
        i for i in ids if lifecycle.move(due.filter(id=i), ScoringRun.Status.QUEUED, queued_at=now)
    ]


def taken_back(now: datetime) -> list[int]:
    """Running runs whose worker stopped beating their heartbeat. A batch's units that wait
    in the queue beat nothing yet: while one waits, its batch's runs are left alone."""
    stale_before = now - timedelta(seconds=settings.RUN_LEASE_SECONDS)
    stale = (
        ScoringRun.objects.filter(status=ScoringRun.Status.RUNNING, heartbeat_at__lt=stale_before)
        .exclude(batch__parts__status=BatchPart.Status.QUEUED)
        .select_related("deployment", "version")
    )
    return [run.id for run in stale if lifecycle.take_back(run, now)]


def lost(now: datetime) -> list[int]:
    """Queued runs no worker took in time: their message was lost (or the queue is long)."""
    before = now - timedelta(seconds=settings.REQUEUE_AFTER_SECONDS)
    return claim_each(
        ScoringRun.objects.filter(status=ScoringRun.Status.QUEUED, queued_at__lt=before),
        queued_at=now,
    )


def resend_lost_units(now: datetime) -> list[int]:
    """Units no worker took in time: their message was lost (or the queue is long)."""
    before = now - timedelta(seconds=settings.REQUEUE_AFTER_SECONDS)
    ids = claim_each(
        BatchPart.objects.filter(status=BatchPart.Status.QUEUED, queued_at__lt=before),
        queued_at=now,
    )
    if ids:
        try:
            enqueue.score_parts(ids)
        except Exception:  # broker down: the next tick tries again
            log.exception("could not send units %s again; a later tick will", ids)
    return ids


def claim_each(candidates, **changes) -> list[int]:
    """The runs whose conditional update this tick wins: another tick may take some first."""
    ids = list(candidates.values_list("id", flat=True))
    return [run_id for run_id in ids if candidates.filter(id=run_id).update(**changes)]


def score_now(
    deployment: Deployment, day: date | None = None, allow_older_slice: bool = False
) -> ScoringRun:
    """Queue the run of `day` (default: today in the deployment's time zone) and send it at
    once; with allow_older_slice it may score an older slice than its package accepts."""
    day = day or timezone.now().astimezone(ZoneInfo(deployment.timezone)).date()
    wanted = [Role.CHAMPION]
    if deployment.challenger_id is not None:  # beside the champion, in the same batch
        wanted.append(Role.CHALLENGER)
    queued, refusals = [], []
    for role in wanted:  # a challenger may score a day its champion already scored
        try:
            queued.append(lifecycle.request_run(deployment, day, allow_older_slice, role))
        except lifecycle.RunError as exc:
            refusals.append(exc)
    if not queued:
        raise refusals[0]
    ready = [r.id for r in queued if r.status == ScoringRun.Status.QUEUED]
    if ready:
        send_batch(ready)
    return queued[0]


def send_batch(run_ids: list[int], now: datetime | None = None) -> Batch:
    """Group runs in a new batch and enqueue it once the rows are committed."""
    with transaction.atomic():
        batch = Batch.objects.create()
        ScoringRun.objects.filter(id__in=run_ids).update(
            batch=batch, queued_at=now or timezone.now()
        )

        def send():
            try:
                enqueue.run_batch(batch.id)
            except Exception:  # broker down: the runs stay queued and a later tick sends them
                log.exception("could not enqueue batch %s; a later tick will", batch.id)

        transaction.on_commit(send)
    return batch
