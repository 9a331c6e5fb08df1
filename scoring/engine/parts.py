"""A large slice split over workers: Parquet row groups in parts of about PART_ROWS rows,
one Celery task each, so more workers on more machines score it faster.

The parts of one (batch, date) are joined in the database: the worker that finishes the
last part commits every run of that slice, with the files all its parts wrote.
"""

import contextlib
import json
import logging
from datetime import date

from django.conf import settings
from django.utils import timezone

from scoring import enqueue
from scoring.engine import commit, features, scores
from scoring.engine.lease import Heartbeat
from scoring.engine.pipeline import SlicePipeline
from scoring.engine.timing import Stopwatch
from scoring.models import BatchPart, ScoringRun
from scoring.quality import assessment
from scoring.runs import lifecycle

log = logging.getLogger(__name__)


def plan_parts(source, slice_date: date) -> list[list] | None:
    """Row groups of a large Parquet slice in parts of about PART_ROWS rows, or None."""
    if not isinstance(source, features.ParquetSource) or settings.PART_ROWS <= 0:
        return None
    parts, current, rows = [], {}, 0
    for path, index, count in source.row_groups(slice_date):
        current.setdefault(path, []).append(index)
        rows += count
        if rows >= settings.PART_ROWS:
            parts.append([[p, groups] for p, groups in current.items()])
            current, rows = {}, 0
    if current:
        parts.append([[p, groups] for p, groups in current.items()])
    return parts if len(parts) > 1 else None


def fan_out(ready: list[ScoringRun], slice_date: date, plan: list[list]) -> None:
    """One task per part: any free worker takes one."""
    first = ready[0]
    parts = [
        BatchPart.objects.create(
            batch_id=first.batch_id,
            date=first.date,
            slice_date=slice_date,
            index=index,
            row_groups=row_groups,
        )
        for index, row_groups in enumerate(plan)
    ]
    log.info("slice %s of batch %s: %d parts", slice_date, first.batch_id, len(parts))
    enqueue.score_parts([part.id for part in parts])


def held_runs(part: BatchPart) -> list[ScoringRun]:
    """The runs of the part's slice still running: those no part has failed."""
    return list(
        ScoringRun.objects.filter(
            batch_id=part.batch_id, date=part.date, status=ScoringRun.Status.RUNNING
        ).select_related("deployment", "version")
    )


def score_part(part_id: int, worker: str) -> None:
    part = BatchPart.objects.select_related("batch").get(id=part_id)
    if not BatchPart.objects.filter(id=part_id, status=BatchPart.Status.QUEUED).update(
        status=BatchPart.Status.RUNNING, worker=worker
    ):
        return  # a redelivered message
    held = held_runs(part)
    clock = Stopwatch()
    with Heartbeat(held), contextlib.ExitStack() as stack:
        pipeline = SlicePipeline(
            features.source_from_settings(),
            part.slice_date,
            stack,
            clock,
            part_index=part.index,
            row_groups=part.row_groups,
        )
        scorers = pipeline.run(held)
        commit.reconnect_if_dropped()
        with clock("stage"):
            files = commit.keep_files(scorers, part.index, part.slice_date)
    BatchPart.objects.filter(id=part_id).update(
        status=BatchPart.Status.DONE, files=files, finished_at=timezone.now()
    )
    log.info("part %s of batch %s: %s", part.index, part.batch_id, clock)
    if join_parts(part):
        commit_parts(part)


def join_parts(part: BatchPart) -> bool:
    """True for exactly one worker: the one that finished the last part of the slice."""
    siblings = BatchPart.objects.filter(batch_id=part.batch_id, date=part.date)
    if siblings.exclude(status=BatchPart.Status.DONE).exists():
        return False
    # Part 0 moves to "committed" once: its conditional update elects the committer.
    return bool(
        siblings.filter(index=0, status=BatchPart.Status.DONE).update(
            status=BatchPart.Status.COMMITTED
        )
    )


def commit_parts(part: BatchPart) -> None:
    """Commit every run of the slice still alive with the files all its parts wrote."""
    siblings = list(BatchPart.objects.filter(batch_id=part.batch_id, date=part.date))
    held = held_runs(part)
    files = {run.id: [] for run in held}
    for sibling in siblings:
        for run_id, written in sibling.files.items():
            if int(run_id) in files:
                files[int(run_id)] += written
            else:  # the run failed in another part: its files never reach the log
                scores.remove_files(written)
    alive = []
    for run in held:
        if sum(json.loads(f["stats"])["numRecords"] for f in files[run.id]) == 0:
            lifecycle.fail(run, f"slice {part.slice_date} has no rows", part.slice_date)
        else:
            alive.append(run)
    committed = commit.commit_files(alive, files, part.date, part.slice_date)
    assessment.check_runs(committed, scores.score_reader())
    commit.finish_batch(part.batch_id)
