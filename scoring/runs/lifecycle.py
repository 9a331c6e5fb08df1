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

from scoring.models import Deployment, PackageVersion, Role, ScoringRun, slice_wanted
from scoring.packages import params, roles
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
    deployment: Deployment,
    version: PackageVersion,
    day: date,
    trigger: str,
    allow_older_slice: bool = False,
    role: str = Role.CHAMPION,
    split_share: float | None = None,
) -> ScoringRun | None:
    """A new queued run, or None when this version already has one for that date."""
    try:
        with transaction.atomic():
            return ScoringRun.objects.create(
                deployment=deployment,
                version=version,
                date=day,
                trigger=trigger,
                role=role,
                split_share=split_share,
                max_attempts=max_attempts(version),
                allow_older_slice=allow_older_slice,
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
    record_failure(held(run), run, error, timezone.now(), slice_date=slice_date)


def record_failure(this: QuerySet, run: ScoringRun, error: str, now: datetime, **changes) -> None:
    """The failed attempt of `run`, if `this` (its row as the caller holds it) still matches."""
    gave_up = run.attempts >= run.max_attempts
    delay = timedelta(
        minutes=params.value(run.version.package.get("params"), "retry_delay_minutes")
    )
    with transaction.atomic():
        updated = move(
            this,
            ScoringRun.Status.FAILED if gave_up else ScoringRun.Status.RETRYING,
            error=error[:4000],
            finished_at=now,
            next_attempt_at=None if gave_up else now + delay,
            **changes,
        )
        if updated:
            run.refresh_from_db()
            notifications.queue(run)


def wait_for_slice(run: ScoringRun, awaited: date, latest: date | None) -> None:
    """The slice is too old: the run waits for a fresh one (scoring.engine.waiting), out of
    its batch. The wait is no attempt yet: it counts as one only if it fails."""
    move(
        held(run),
        ScoringRun.Status.WAITING,
        attempts=F("attempts") - 1,
        batch=None,
        awaited_slice=awaited,
        latest_slice=latest,
        waiting_since=timezone.now(),
        heartbeat_at=None,
    )


def stop_waiting(run_ids: list[int], now: datetime) -> list[int]:
    """Waiting runs whose slice has landed, queued again; those this caller moved."""
    waiting = ScoringRun.objects.filter(id__in=run_ids, status=ScoringRun.Status.WAITING)
    ids = list(waiting.values_list("id", flat=True))
    move(waiting, ScoringRun.Status.QUEUED, queued_at=now, waiting_since=None)
    return list(
        ScoringRun.objects.filter(
            id__in=ids, status=ScoringRun.Status.QUEUED, queued_at=now
        ).values_list("id", flat=True)
    )


def give_up_waiting(run: ScoringRun, latest: date | None, now: datetime) -> None:
    """The deadline passed: a failed attempt like any other, whose email names the slice
    it waited for and the latest there is."""
    hours = params.value(run.version.package.get("params"), "wait_for_slice_hours")
    wanted = slice_wanted(run.awaited_slice, run.date)
    error = (
        f"waited {hours:g} h for {wanted} of the features; "
        f"the latest slice there is {latest or 'none'}"
    )
    this = ScoringRun.objects.filter(
        id=run.id, status=ScoringRun.Status.WAITING, waiting_since=run.waiting_since
    )
    run.attempts += 1  # the wait was this attempt
    record_failure(
        this, run, error, now, attempts=run.attempts, latest_slice=latest, waiting_since=None
    )


def newer_run(run: ScoringRun) -> ScoringRun | None:
    """A run made later, of another version in the same role of the same model for the same
    date (a newer upload, a promotion or a rollback since): it owns the role's rows."""
    return (
        ScoringRun.objects.filter(
            deployment_id=run.deployment_id, date=run.date, role=run.role, id__gt=run.id
        )
        .exclude(version_id=run.version_id)
        .exclude(status=ScoringRun.Status.FAILED)
        .order_by("-id")
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


def request_run(
    deployment: Deployment,
    day: date,
    allow_older_slice: bool = False,
    role: str = Role.CHAMPION,
) -> ScoringRun:
    """Score now: the run of the version in that role for that date, queued unless it is
    running or already scored.

    It scores the slice of that date (or as old as the package accepts) and waits for it;
    with allow_older_slice, the latest slice on or before the date, however old.
    """
    version = deployment.champion if role == Role.CHAMPION else deployment.challenger
    if version is None:
        kind = "version" if role == Role.CHAMPION else "challenger"
        raise RunError(f"{deployment.name} has no valid {kind} to score")
    run = create_run(
        deployment,
        version,
        day,
        ScoringRun.Trigger.MANUAL,
        allow_older_slice=allow_older_slice,
        role=role,
        split_share=roles.day_split(deployment, day),
    )
    if run is not None:
        return run
    run = ScoringRun.objects.get(version=version, date=day)
    if run.status == ScoringRun.Status.SUCCEEDED:
        raise RunError(
            f"version {version.number} already scored {day} (run {run.id}): its scores are committed"
        )
    # Queued or running: nothing to do. Retrying: now instead of later. Failed: a fresh set
    # of attempts. Waiting: it goes on waiting, unless it may now take an older slice.
    this = ScoringRun.objects.filter(id=run.id)
    if allow_older_slice:
        this.exclude(status=ScoringRun.Status.RUNNING).update(allow_older_slice=True)
        move(
            this.filter(status=ScoringRun.Status.WAITING),
            ScoringRun.Status.QUEUED,
            queued_at=timezone.now(),
            waiting_since=None,
        )
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
