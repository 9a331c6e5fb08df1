"""A batch's slice split into units (scoring.engine.plan): a shard of its runs × a part of
the rows (about PART_ROWS: whole Parquet row groups, or a range of ids of a PostgreSQL
table), one Celery task each, so every free worker, on any machine, takes one. From a
database, the units of one part of the rows share one read of it (scoring.engine.slice_copies).

The units of a shard are joined in the database: the worker that finishes the last of
them commits the shard's runs with the files all its units wrote, in one transaction;
the last commit of the batch closes it and sends the reports.
"""

import contextlib
import json
import logging
from datetime import date

from django.conf import settings
from django.utils import timezone

from scoring import enqueue
from scoring.engine import commit, features, memory, scores, slice_copies
from scoring.engine.lease import Heartbeat
from scoring.engine.pipeline import SlicePipeline
from scoring.engine.timing import Stopwatch
from scoring.models import BatchPart, ScoringRun
from scoring.runs import batches, lifecycle

log = logging.getLogger(__name__)


def plan_parts(source, slice_date: date) -> list[dict] | None:
    """A large slice in parts of about PART_ROWS rows, or None to read it whole."""
    if settings.PART_ROWS <= 0:
        return None
    parts = source.row_parts(slice_date, settings.PART_ROWS)
    return parts if len(parts) > 1 else None


def fan_out(shards: list[list[ScoringRun]], slice_date: date, row_parts: list) -> None:
    """One task per unit: any free worker takes one."""
    first = shards[0][0]
    units = BatchPart.objects.bulk_create(
        BatchPart(
            batch_id=first.batch_id,
            date=first.date,
            slice_date=slice_date,
            shard=shard_index,
            index=index,
            run_ids=[run.id for run in shard],
            rows=rows,
        )
        for shard_index, shard in enumerate(shards)
        for index, rows in enumerate(row_parts)
    )
    log.info(
        "slice %s of batch %s: %d shards × %d row parts",
        slice_date,
        first.batch_id,
        len(shards),
        len(row_parts),
    )
    enqueue.score_parts([unit.id for unit in units])


def held_runs(part: BatchPart) -> list[ScoringRun]:
    """The runs of the unit's shard still running: those no unit has failed."""
    runs = ScoringRun.objects.filter(
        batch_id=part.batch_id, date=part.date, status=ScoringRun.Status.RUNNING
    )
    if part.run_ids:  # units planned before shards hold every run of their slice
        runs = runs.filter(id__in=part.run_ids)
    return list(runs.select_related("deployment", "version"))


def score_part(part_id: int, worker: str) -> None:
    part = BatchPart.objects.select_related("batch").get(id=part_id)
    if not BatchPart.objects.filter(id=part_id, status=BatchPart.Status.QUEUED).update(
        status=BatchPart.Status.RUNNING, worker=worker
    ):
        return  # a redelivered message
    held = held_runs(part)
    clock = Stopwatch()
    files, kept_profiles = {}, {}
    try:
        with Heartbeat(held), contextlib.ExitStack() as stack:
            pipeline = SlicePipeline(
                slice_copies.source_for(features.source_from_settings(), part),
                part.slice_date,
                stack,
                clock,
                part_index=part.index,
                part=part.rows,
            )
            scorers = pipeline.run(held)
            commit.reconnect_if_dropped()
            with clock("stage"):
                files = commit.keep_files(scorers, part.shard, part.index, part.slice_date)
                memory.give_back()  # the chunks, scores and files of the unit, before the commit
            # Profiles: the shard's committer merges them with the other units'.
            kept_profiles = {s.run.id: s.profile.to_json() for s in scorers if s.run.id in files}
    except Exception as exc:  # fail the shard's runs with the error, and retry them
        commit.fail_unexpectedly(held, exc, part.slice_date)
    BatchPart.objects.filter(id=part_id).update(
        status=BatchPart.Status.DONE,
        files=files,
        profiles=kept_profiles,
        finished_at=timezone.now(),
    )
    log.info("unit %s.%s of batch %s: %s", part.shard, part.index, part.batch_id, clock)
    if join_parts(part):
        held = held_runs(part)
        try:
            with Heartbeat(held):
                commit_parts(part, held)
        except Exception as exc:
            commit.fail_unexpectedly(held, exc, part.slice_date)
    if batches.finish_if_done(part.batch_id):
        slice_copies.discard(part.batch_id)


def shard_units(part: BatchPart):
    return BatchPart.objects.filter(batch_id=part.batch_id, date=part.date, shard=part.shard)


def join_parts(part: BatchPart) -> bool:
    """True for exactly one worker: the one that finished the last unit of the shard."""
    siblings = shard_units(part)
    if siblings.exclude(status=BatchPart.Status.DONE).exists():
        return False
    # Unit 0 moves to "committed" once: its conditional update elects the committer.
    return bool(
        siblings.filter(index=0, status=BatchPart.Status.DONE).update(
            status=BatchPart.Status.COMMITTED
        )
    )


def commit_parts(part: BatchPart, held: list[ScoringRun]) -> None:
    """Commit every run of the shard still alive with the files all its units wrote."""
    files = {run.id: [] for run in held}
    units = list(shard_units(part))
    for sibling in units:
        for run_id, written in sibling.files.items():
            if int(run_id) in files:
                files[int(run_id)] += written
            else:  # the run failed in another unit: its files never reach the log
                scores.remove_files(written)
    alive = []
    for run in held:
        if sum(json.loads(f["stats"])["numRecords"] for f in files[run.id]) == 0:
            lifecycle.fail(run, f"slice {part.slice_date} has no rows", part.slice_date)
        else:
            alive.append(run)
    summaries = commit.merged_profiles([unit.profiles for unit in units], set(files))
    committed = commit.commit_files(alive, files, part.date, part.slice_date, summaries)
    commit.check_and_succeed(committed, part.slice_date)
