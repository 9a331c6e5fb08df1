"""The end of a unit: each run's scores file kept, every run committed in one Delta
transaction (each partition whole, or none), checked, and only then succeeded.

A run whose file cannot be kept, or whose commit fails, is retried; its files are removed
and never reach the log.
"""

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import date

from django.db import connection

from scoring.engine import scores
from scoring.engine.pipeline import Scorer
from scoring.models import ScoringRun
from scoring.quality import assessment, challengers, profiles, samples
from scoring.runs import lifecycle

log = logging.getLogger(__name__)


def finish_file(scorer: Scorer) -> list[dict]:
    """Close the run's scores file: its add action, or none for a slice without rows."""
    if scorer.writer.rows == 0:
        scorer.writer.abort()
        return []
    return [scorer.writer.close()]


def keep_files(
    scorers: list[Scorer], shard: int, part_index: int, slice_date: date
) -> dict[int, list[dict]]:
    """Finish each run's scores file and save the slice's sample: what the commit needs.

    Finishing is mostly waiting for S3 to complete the uploads, so side by side; a run
    whose file cannot be kept (S3 down) fails alone, and every run fails (is retried)
    when the sample their checks need cannot be kept."""
    if not scorers:
        return {}
    run = scorers[0].run
    with ThreadPoolExecutor(max_workers=8) as pool:
        sampled = pool.submit(
            samples.save,
            run.batch_id,
            run.date,
            shard,
            part_index,
            scorers[0].sample,
            [scorer.run.id for scorer in scorers],
        )
        finishing = [(scorer, pool.submit(finish_file, scorer)) for scorer in scorers]
    unsampled = sampled.exception()
    if unsampled is not None:
        log.error("the sample of batch %s could not be kept: %s", run.batch_id, unsampled)
    files = {}
    for scorer, finished in finishing:
        try:
            written = finished.result()
        except Exception as exc:
            log.exception("the scores of run %s could not be kept", scorer.run.id)
            scorer.writer.abort()
            lifecycle.fail(scorer.run, f"keeping the scores failed: {exc}", slice_date)
            continue
        if unsampled is not None:
            scores.remove_files(written)
            lifecycle.fail(scorer.run, f"keeping the sample failed: {unsampled}", slice_date)
            continue
        files[scorer.run.id] = written
    return files


def reconnect_if_dropped() -> None:
    """Scoring goes minutes without a query: a database connection dropped meanwhile (a
    restart, a failover) is replaced before the runs' bookkeeping. Django notices a dead
    connection only when a query fails, and then fails every query after it."""
    if connection.connection is not None and not connection.is_usable():
        connection.close()


def commit(scorers: list[Scorer], slice_date: date) -> list[ScoringRun]:
    """All runs of the slice in one Delta transaction; returns the runs that committed."""
    reconnect_if_dropped()
    files = keep_files(scorers, 0, 0, slice_date)
    alive = []
    for scorer in scorers:
        if files.get(scorer.run.id):
            alive.append(scorer.run)
        elif scorer.run.id in files:
            lifecycle.fail(scorer.run, f"slice {slice_date} has no rows", slice_date)
    if not alive:
        return []
    summaries = {scorer.run.id: scorer.profile.summary() for scorer in scorers}
    return commit_files(alive, files, alive[0].date, slice_date, summaries)


def merged_profiles(parts: list[dict[str, dict]], run_ids) -> dict[int, dict]:
    """The summary of each run's profile, merged over the `parts` its units kept
    (run id -> ScoreProfile.to_json())."""
    merged = {}
    for part in parts:
        for run_id, kept in part.items():
            if int(run_id) in run_ids:
                profile = profiles.ScoreProfile.from_json(kept)
                if int(run_id) in merged:
                    merged[int(run_id)].merge(profile)
                else:
                    merged[int(run_id)] = profile
    return {run_id: profile.summary() for run_id, profile in merged.items()}


def commit_files(
    held: list[ScoringRun],
    files: dict[int, list[dict]],
    day: date,
    slice_date: date,
    summaries: dict[int, dict],
) -> list[ScoringRun]:
    """Add the runs' written files to their tables: the live runs' to `scores` in one
    transaction, then the shadow challengers' to `scores_shadow` in another, so a reader of
    `scores` sees each partition whole or not at all; a failed commit fails its table's
    runs only. Each run that committed keeps the profile of its scores (`summaries`)."""
    committed = []
    for name in scores.TABLES:
        runs = [run for run in held if scores.table_of(run) == name]
        if runs and commit_table(name, runs, files, day, slice_date):
            committed += runs
    for run in committed:
        run.rows = sum(json.loads(f["stats"])["numRecords"] for f in files[run.id])
        run.profile = summaries.get(run.id)
    return committed


def commit_table(
    name: str, runs: list[ScoringRun], files: dict[int, list[dict]], day: date, slice_date: date
) -> bool:
    """One table's share of the commit; False (its runs failed, to be retried) if it failed."""
    try:
        scores.commit(
            day,
            [(run.deployment_id, run.role) for run in runs],
            [f for run in runs for f in files[run.id]],
            name,
        )
    except Exception as exc:  # S3 down or a conflicting commit: the runs are retried
        log.exception("commit of runs %s to %s failed", [run.id for run in runs], name)
        for run in runs:
            scores.remove_files(files[run.id])
            lifecycle.fail(run, f"committing the scores failed: {exc}", slice_date)
        return False
    return True


def check_and_succeed(committed: list[ScoringRun], slice_date: date) -> None:
    """Check the committed runs' quality, then mark them succeeded: a run is at work until
    both are done, so its batch's report never goes out without its checks."""
    assessment.check_runs(committed, scores.score_reader())
    # A challenger and its champion commit together (one shard): their day is compared
    # before they succeed, so before the batch's report goes out.
    challengers.compare_days(committed, scores.score_reader(("entity_id", "score")))
    for run in committed:
        lifecycle.succeed(run, run.rows, slice_date, run.profile)


def fail_unexpectedly(runs: list[ScoringRun], error: Exception, slice_date: date | None) -> None:
    """Something the engine did not expect went wrong: the runs it held fail with the error
    and are retried as any failure is, instead of waiting, running, for their lease."""
    log.exception("scoring runs %s failed", [run.id for run in runs], exc_info=error)
    reconnect_if_dropped()
    message = f"the batch failed on the worker: {type(error).__name__}: {error}"
    for run in runs:
        lifecycle.fail(run, message, slice_date)
