"""The life of a scoring run: created, queued, claimed, then succeeded or failed and retried.

Every change of state is a conditional update on the row (`move`), along the
transitions `ScoringRun.TRANSITIONS` allows, so two workers or two ticks can never both
take a run, and a worker that lost its lease cannot write over the run's new owner.
"""

import logging
from collections import defaultdict
from datetime import date, datetime, timedelta

from django.db import IntegrityError, transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from scoring.models import Deployment, PackageVersion, ScoringRun
from scoring.packages import params
from scoring.runs import notifications, worker_loss

log = logging.getLogger(__name__)


class RunError(ValueError):
    """A run cannot be requested; the message says why."""


def move(runs: QuerySet, to: str, /, **changes) -> int:
    """Move `runs` to status `to`, those whose status may go there; how many moved."""
    sources = [status for status, targets in ScoringRun.TRANSITIONS.items() if to in targets]
    return runs.filter(status__in=sources).update(status=to, **changes)


def max_attempts(version: PackageVersion) -> int:
    return params.value(version.package.get("params"), "max_attempts")


def create_run(
    deployment: Deployment, version: PackageVersion, day: date, trigger: str
) -> ScoringRun | None:
    """A new queued run, or None when this version already has one for that date."""
    try:
        with transaction.atomic():
            return ScoringRun.objects.create(
                deployment=deployment,
                version=version,
                date=day,
                trigger=trigger,
                max_attempts=max_attempts(version),
            )
    except IntegrityError:
        return None


def claim_batch(batch_id: int) -> list[ScoringRun]:
    """Take every queued run of this batch at once (a fleet's thousand runs in two
    queries); the runs this worker won, none when another worker or batch has them."""
    now = timezone.now()
    move(
        ScoringRun.objects.filter(batch_id=batch_id, status=ScoringRun.Status.QUEUED),
        ScoringRun.Status.RUNNING,
        attempts=F("attempts") + 1,
        started_at=now,
        heartbeat_at=now,
        finished_at=None,
    )
    # The runs this update moved: a worker that took them first set another started_at.
    return list(
        ScoringRun.objects.filter(
            batch_id=batch_id, status=ScoringRun.Status.RUNNING, started_at=now
        ).select_related("deployment", "version")
    )


def held(run: ScoringRun):
    """The run's row as long as this worker still holds it (same attempt, still running)."""
    return ScoringRun.objects.filter(
        id=run.id, status=ScoringRun.Status.RUNNING, attempts=run.attempts
    )


def heartbeat(runs: list[ScoringRun]) -> None:
    """One update for each attempt number among the runs, not one per run."""
    by_attempt = defaultdict(list)
    for run in runs:
        by_attempt[run.attempts].append(run.id)
    for attempts, ids in by_attempt.items():
        ScoringRun.objects.filter(
            id__in=ids, status=ScoringRun.Status.RUNNING, attempts=attempts
        ).update(heartbeat_at=timezone.now())


def succeed(run: ScoringRun, rows: int, slice_date: date, profile: dict | None = None) -> None:
    now = timezone.now()
    run.rows, run.profile = rows, profile  # for the checks, which follow
    move(
        held(run),
        ScoringRun.Status.SUCCEEDED,
        rows=rows,
        profile=profile,
        slice_date=slice_date,
        error="",
        finished_at=now,
        next_attempt_at=None,
    )


def fail(run: ScoringRun, error: str, slice_date: date | None = None) -> None:
    """Record a failed attempt: retry after the package's delay, or give up; tell the owner."""
    now = timezone.now()
    gave_up = run.attempts >= run.max_attempts
    delay = timedelta(
        minutes=params.value(run.version.package.get("params"), "retry_delay_minutes")
    )
    with transaction.atomic():
        updated = move(
            held(run),
            ScoringRun.Status.FAILED if gave_up else ScoringRun.Status.RETRYING,
            error=error[:4000],
            slice_date=slice_date,
            finished_at=now,
            next_attempt_at=None if gave_up else now + delay,
        )
        if updated:
            run.refresh_from_db()
            notifications.queue(run)


def newer_run(run: ScoringRun) -> ScoringRun | None:
    """A run of a newer version of the same model for the same date: it owns the partition."""
    return (
        ScoringRun.objects.filter(
            deployment_id=run.deployment_id, date=run.date, version__number__gt=run.version.number
        )
        .exclude(status=ScoringRun.Status.FAILED)
        .order_by("-version__number")
        .first()
    )


def supersede(run: ScoringRun, newer: ScoringRun) -> None:
    """The partition belongs to a newer version's run: this one stops, without retries."""
    move(
        held(run),
        ScoringRun.Status.FAILED,
        error=f"superseded by run {newer.id} of version {newer.version.number} for the same date",
        finished_at=timezone.now(),
        next_attempt_at=None,
    )


def take_back(run: ScoringRun, now: datetime) -> bool:
    """A running run whose worker stopped answering: queue it again, or give up."""
    stale = ScoringRun.objects.filter(
        id=run.id, status=ScoringRun.Status.RUNNING, heartbeat_at=run.heartbeat_at
    )
    message = worker_loss.after_losing(run.error, run.attempts)
    if run.attempts >= run.max_attempts:
        with transaction.atomic():
            if move(stale, ScoringRun.Status.FAILED, error=message, finished_at=now):
                # For the operators: workers that keep dying are theirs to look at.
                log.error("run %s gave up: %s (model %s)", run.id, message, run.deployment_id)
                run.refresh_from_db()
                notifications.queue(run)
        return False
    return bool(move(stale, ScoringRun.Status.QUEUED, error=message, queued_at=now))


def request_run(deployment: Deployment, day: date) -> ScoringRun:
    """Score now: the run for that date, queued unless it is running or already scored."""
    version = deployment.current_version
    if version is None:
        raise RunError(f"{deployment.name} has no valid version to score")
    run = create_run(deployment, version, day, ScoringRun.Trigger.MANUAL)
    if run is not None:
        return run
    run = ScoringRun.objects.get(version=version, date=day)
    if run.status == ScoringRun.Status.SUCCEEDED:
        raise RunError(
            f"version {version.number} already scored {day} (run {run.id}): its scores are committed"
        )
    # Queued or running: nothing to do. Retrying: now instead of later. Failed: a fresh set of attempts.
    this = ScoringRun.objects.filter(id=run.id)
    move(
        this.filter(status=ScoringRun.Status.RETRYING),
        ScoringRun.Status.QUEUED,
        queued_at=timezone.now(),
    )
    move(
        this.filter(status=ScoringRun.Status.FAILED),
        ScoringRun.Status.QUEUED,
        attempts=0,
        queued_at=timezone.now(),
        trigger=ScoringRun.Trigger.MANUAL,
    )
    run.refresh_from_db()
    return run
