"""Fresh slices: a run never scores a slice older than its package accepts, silently.

A run of date D accepts the slices from D - max_slice_age_days to D (the deployment's
setting, else the package's params; 0 by default: the slice of D itself). A worker that
finds only older slices puts the run to wait (`lifecycle.wait_for_slice`); each tick looks
again (`recheck`): the runs whose slice has landed start together in one batch, and a run
that waited longer than its `wait_for_slice_hours` fails like any failure (its email names
the slice it waited for and the latest there is) and is retried as any failure is.
"Score now" with allow_older_slice takes the latest slice on or before its date, as old as
it may be; every run records the slice it scored.
"""

import logging
from datetime import date, datetime, timedelta

from scoring.engine import features, sources
from scoring.models import ScoringRun
from scoring.packages import params
from scoring.runs import dispatch, lifecycle

log = logging.getLogger(__name__)


def max_slice_age_days(run: ScoringRun) -> int:
    """The deployment's own setting (the form, the API), else the package's params."""
    if run.deployment.max_slice_age_days is not None:
        return run.deployment.max_slice_age_days
    return params.value(run.version.package.get("params"), "max_slice_age_days")


def oldest_accepted(run: ScoringRun) -> date | None:
    """The oldest slice the run may score; None: any (score now with allow_older_slice)."""
    if run.allow_older_slice:
        return None
    return run.date - timedelta(days=max_slice_age_days(run))


def deadline(run: ScoringRun) -> datetime:
    hours = params.value(run.version.package.get("params"), "wait_for_slice_hours")
    return run.waiting_since + timedelta(hours=hours)


def latest_slice(source, day: date) -> date | None:
    """The latest slice on or before `day`, or None when there is none yet."""
    try:
        return source.latest_slice(day)
    except features.NoSlice:
        return None


def hold_stale(source, day: date, runs: list[ScoringRun]) -> tuple[date | None, list[ScoringRun]]:
    """The latest slice on or before `day` and the runs that accept it; the others wait for
    a fresher one, and a run that takes any slice fails if there is none at all."""
    latest = latest_slice(source, day)
    fresh = []
    for run in runs:
        oldest = oldest_accepted(run)
        if oldest is not None and (latest is None or latest < oldest):
            lifecycle.wait_for_slice(run, oldest, latest)
        elif latest is None:
            lifecycle.fail(run, f"the feature source has no slice on or before {day}")
        else:
            fresh.append(run)
    return latest, fresh


def recheck(now: datetime) -> list[int]:
    """Look again at the waiting runs (one lookup per date they wait for): queue those
    whose slice is there, in one batch; fail those past their deadline. The ids queued.

    The lookups ask the engine's own reader, so a slice counts as landed when the batch
    will find it: with ENGINE=spark, the Spark session of the worker running the tick
    (each Spark worker process holds one), which reads only metadata for it."""
    waiting = list(
        ScoringRun.objects.filter(status=ScoringRun.Status.WAITING).select_related(
            "deployment", "version"
        )
    )
    if not waiting:
        return []
    source = sources.configured()
    if source is None:
        return []  # nothing to look at: the worker said why when the runs started
    try:
        latest_by_date = {day: latest_slice(source, day) for day in {run.date for run in waiting}}
    except features.FeatureSourceError:
        # The next tick looks again; meanwhile the deadlines still pass, on what was seen.
        log.exception("cannot look up the feature slices; the next tick looks again")
        latest_by_date = {}
    landed = []
    for run in waiting:
        latest = latest_by_date.get(run.date, run.latest_slice)
        oldest = oldest_accepted(run)
        if (
            run.date in latest_by_date
            and latest is not None
            and (oldest is None or latest >= oldest)
        ):
            landed.append(run.id)
        elif now >= deadline(run):
            lifecycle.give_up_waiting(run, latest, now)
        elif latest != run.latest_slice:
            ScoringRun.objects.filter(id=run.id).update(latest_slice=latest)
    queued = lifecycle.stop_waiting(landed, now)
    if queued:
        dispatch.send_batch(queued, now)
    return queued
