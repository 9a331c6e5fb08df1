"""A batch: the runs due at one moment. Per date, they read the latest slice once, only
the union of their models' columns; each model scores each chunk in the worker's pool of
sandboxes; the runs of a slice commit their partitions of the scores table in one
transaction; then their quality is checked and each owner gets one report. A fleet of
models, or a large slice, is planned as units (a shard of the runs × a part of the rows)
that every free worker takes (scoring.engine.parts); with ENGINE=spark, a Spark job a shard
(scoring.engine.spark).

A model fails alone (missing columns, a crash in predict, bad output, a timeout): the
other runs of the batch still commit. An error the engine did not expect fails the runs
it holds, which are retried; a worker that dies leaves its runs running without a
heartbeat: tick takes them back and they are retried.
"""

import contextlib
import logging
from collections import defaultdict
from datetime import date

from django.conf import settings
from django.utils import timezone

from scoring.engine import commit, features, parts, plan, slice_copies, sources, waiting
from scoring.engine.lease import Heartbeat
from scoring.engine.pipeline import SlicePipeline
from scoring.engine.timing import Stopwatch
from scoring.models import Batch, ScoringRun
from scoring.runs import batches, lifecycle

log = logging.getLogger(__name__)


def run_batch(batch_id: int) -> None:
    claimed = lifecycle.claim_batch(batch_id)
    if not claimed:
        return  # a redelivered message, or another worker has them
    started = timezone.now()
    Batch.objects.filter(id=batch_id).update(started_at=started)
    by_date = defaultdict(list)
    for run in claimed:
        by_date[run.date].append(run)
    with Heartbeat(claimed):
        for day, group in sorted(by_date.items()):
            try:
                score_date(day, group)
            except Exception as exc:
                commit.fail_unexpectedly(group, exc, None)
    # Split over workers, the unit that finishes last commits and closes the batch.
    batches.finish_if_done(batch_id)
    log.info("batch %s done in %.2f s", batch_id, (timezone.now() - started).total_seconds())


def score_date(day: date, group: list[ScoringRun]) -> None:
    """The runs of one date: the slice they read, less the runs that cannot score it."""
    source = sources.configured()
    if source is None:
        for run in group:
            lifecycle.fail(run, "no feature source is configured (FEATURES_URI)")
        return
    try:
        slice_date, group = waiting.hold_stale(source, day, group)
        if not group:
            return
        available = set(source.columns(slice_date))
    except features.FeatureSourceError as exc:
        for run in group:
            lifecycle.fail(run, str(exc))
        return
    ready = []
    for run in group:
        newer = lifecycle.newer_run(run)
        if newer is not None:
            lifecycle.supersede(run, newer)
            continue
        missing = [name for name in run.version.package["features"] if name not in available]
        if missing:
            lifecycle.fail(
                run,
                f"{len(missing)} features are missing from slice {slice_date}: {', '.join(missing[:30])}",
                slice_date,
            )
        else:
            ready.append(run)
    if ready:
        score_slice(source, slice_date, ready)


def score_slice(source, slice_date: date, ready: list[ScoringRun]) -> None:
    if settings.ENGINE == "spark":  # Spark jobs: the cluster splits the rows itself
        from scoring.engine.spark import job

        job.score_slice(source, slice_date, ready)
        return
    shards = plan.shards(ready, settings.SHARD_MODELS)
    row_parts = parts.plan_parts(source, slice_date) or [None]
    if len(shards) * len(row_parts) > 1:
        slice_copies.plan(source, shards, row_parts)
        parts.fan_out(shards, slice_date, row_parts)
        return
    clock = Stopwatch()
    with contextlib.ExitStack() as stack:
        pipeline = SlicePipeline(source, slice_date, stack, clock)
        scorers = pipeline.run(ready)
        with clock("commit"):
            committed = commit.commit(scorers, slice_date)
    with clock("quality"):
        commit.check_and_succeed(committed, slice_date)
    log.info("slice %s, %d runs in %s", slice_date, len(ready), clock)
