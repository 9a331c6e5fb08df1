"""A batch's slice scored by Spark, a job per shard of its runs (at most SHARD_MODELS
models that share columns, as the Celery engine plans them), then committed and checked as
by Celery workers.

For each shard the driver reads the slice through Spark (the union of the shard's columns,
the slice's partition only), sends its packages once (a broadcast), and has each partition
scored by every run of the shard (scoring.engine.spark.executor). What comes back is metadata: each run's files,
the profile of its scores, or its error; each task's sample of rows. Runs that failed in
any task fail alone, their files removed; the others commit in one Delta transaction
(scoring.engine.commit), are checked, and succeed. A job that fails as a whole (its tasks
failed Spark's attempts) raises SparkJobFailed, in one line (the whole trace goes to the
worker's log): the batch fails its runs, which are retried as any failure.
"""

import json
import logging
from collections import defaultdict
from datetime import date

import pyarrow as pa
from django.conf import settings

from scoring.engine import commit, package_cache, plan, scores, worker_probe
from scoring.engine.chunk_scoring import union
from scoring.engine.limits import sandbox_limits
from scoring.engine.spark import executor, session
from scoring.engine.spark.failures import SparkJobFailed, short_message
from scoring.engine.spark.source import SparkSource
from scoring.engine.timing import Stopwatch
from scoring.models import ScoringRun
from scoring.packages import storage
from scoring.quality import assessment, samples
from scoring.runs import lifecycle

log = logging.getLogger(__name__)
RESULT_DDL = ", ".join(
    f"{field.name} {'long' if field.type == pa.int64() else field.type}"
    for field in executor.RESULT_SCHEMA
)


def score_slice(source: SparkSource, slice_date: date, ready: list[ScoringRun]) -> None:
    """The runs in shards of models that share columns (scoring.engine.plan), as the Celery
    engine plans them: a job each, one after the other, so an executor's Python worker
    holds at most a shard's models whatever the size of the fleet."""
    for index, shard in enumerate(plan.shards(ready, settings.SHARD_MODELS)):
        score_shard(source, slice_date, shard, index)


def score_shard(source: SparkSource, slice_date: date, ready: list[ScoringRun], shard: int):
    clock = Stopwatch()
    with clock("fetch"):
        runs, packages = task_runs(ready, slice_date)
    if not runs:
        return
    spark = session.get()
    broadcast = spark.sparkContext.broadcast(packages)
    try:
        task_plan = executor.TaskPlan(
            runs=runs,
            packages=broadcast,
            slice_date=slice_date,
            chunk_rows=min(
                run.version.package["params"].get("chunk_rows", settings.CHUNK_ROWS)
                for run in ready
            ),
            sample_rows=settings.QUALITY_SAMPLE_ROWS,
            limits=sandbox_limits(),
            pool=settings.SANDBOX_POOL,
            scores_bucket=settings.SCORES_BUCKET,
            chunk_dir=settings.CHUNK_DIR or None,
            s3=storage.arrow_filesystem_options(),
        )
        columns = [source.id_column, *union(run.version.package["features"] for run in ready)]
        frame = source.slice_frame(slice_date, columns)
        with clock("score"):
            results = scored(frame, task_plan, slice_date, shard)
    finally:
        broadcast.unpersist()
    held_ids = {run.id for run in runs}
    held = [run for run in ready if run.id in held_ids]
    commit.reconnect_if_dropped()
    with clock("commit"):
        committed = commit_results(held, results, slice_date, shard)
    with clock("quality"):
        commit.check_and_succeed(committed, slice_date)
    log.info("slice %s, shard %s, %d runs in %s", slice_date, shard, len(ready), clock)
    log.info("Spark tasks of slice %s: %s", slice_date, task_summary(results))


def scored(frame, task_plan: executor.TaskPlan, slice_date: date, shard: int) -> pa.Table:
    """What the tasks returned. A job whose tasks failed Spark's attempts raises in one line
    for the runs' owners; its whole trace goes to the worker's log."""
    try:
        return frame.mapInArrow(executor.score_partition(task_plan), RESULT_DDL).toArrow()
    except Exception as exc:  # pyspark's captured errors and py4j's
        log.error("the Spark job of slice %s, shard %s failed", slice_date, shard, exc_info=exc)
        raise SparkJobFailed(short_message(exc)) from None


def task_runs(ready: list[ScoringRun], slice_date: date):
    """What the tasks are told of each run, and the packages' bytes by sha256; a run whose
    package cannot be fetched fails alone."""
    copies = package_cache.local_copies(run.version for run in ready)
    edges = assessment.baseline_edges(ready)
    runs, packages = [], {}
    for run in ready:
        copy = copies[run.version_id]
        if isinstance(copy, Exception):
            lifecycle.fail(run, str(copy), slice_date)
            continue
        packages[run.version.sha256] = copy.read_bytes()
        runs.append(
            executor.RunRef(
                id=run.id,
                deployment_id=run.deployment_id,
                date=run.date,
                attempts=run.attempts,
                version=executor.Version(run.version.number),
                owner=run.deployment.owner_key,
                sha256=run.version.sha256,
                role=run.role,
                split_share=run.split_share,
                baseline_edges=edges[run.id],
                requirements=tuple(run.version.package.get("requirements") or ()),
            )
        )
    return runs, packages


def commit_results(
    held: list[ScoringRun], results: pa.Table, slice_date: date, shard: int
) -> list[ScoringRun]:
    """Fail the runs any task failed (their files removed), commit the others with the
    files every task wrote, and keep the tasks' samples for the checks."""
    errors, files, kept_profiles = {}, defaultdict(list), []
    tasks = 0
    for row in results.to_pylist():
        if row["run_id"] is None:
            keep_task_report(held, row, shard, tasks)
            tasks += 1
            continue
        if row["error"] is not None:
            errors.setdefault(row["run_id"], row["error"])
        else:
            files[row["run_id"]] += json.loads(row["files"])
            kept_profiles.append({row["run_id"]: json.loads(row["profile"])})
    alive = []
    for run in held:
        if run.id in errors:
            scores.remove_files(files.pop(run.id, []))
            lifecycle.fail(run, errors[run.id], slice_date)
        elif not files.get(run.id):
            lifecycle.fail(run, f"slice {slice_date} has no rows", slice_date)
        else:
            alive.append(run)
    summaries = commit.merged_profiles(kept_profiles, {run.id for run in alive})
    return commit.commit_files(alive, files, held[0].date, slice_date, summaries)


def keep_task_report(held: list[ScoringRun], row: dict, shard: int, task: int) -> None:
    """A task's sample of rows (a part of the slice's sample) and what its sandboxes found."""
    if row["sample"] is not None:
        table = pa.ipc.open_stream(row["sample"]).read_all()
        run_ids = [run.id for run in held]
        samples.save_table(held[0].batch_id, held[0].date, shard, task, table, run_ids)
    if row["protections"] and json.loads(row["protections"]):
        worker_probe.keep_executor_report(row["host"], json.loads(row["protections"]))


def task_summary(results: pa.Table) -> str:
    """The tasks' own account: how many, and the seconds of the slowest in each phase
    (`start`: starting the sandboxes and loading the models, the task's fixed cost)."""
    timings = [json.loads(t) for t in results.column("timing").to_pylist() if t is not None]
    phases = sorted({name for timing in timings for name in timing} - {"rows", "chunks"})
    slowest = ", ".join(f"{name} {max(t.get(name, 0) for t in timings):.2f} s" for name in phases)
    rows = sum(t["rows"] for t in timings)
    busy = sum(t.get(name, 0) for t in timings for name in phases)
    return f"{len(timings)} tasks, {rows} rows, {busy:.2f} task-seconds; slowest task: {slowest}"
