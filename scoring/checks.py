"""The data-quality checks of committed runs: find the baseline, gather both sides, store the result.

The baseline is the model's previous committed partition (its latest succeeded run of an
earlier date), else the package's `reference_scores`. Scores come from the scores table
(both partitions, the score column only); features come from the row samples the runs
kept while they scored (scoring.samples), so the slice is never read twice. The metrics
themselves are plain functions in scoring.quality.
"""

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from django.conf import settings

from scoring import quality, samples, scores
from scoring.models import ScoringRun

log = logging.getLogger(__name__)
# Reading both sides from S3 and the metrics (numpy, the adversarial model) release the
# GIL: runs checked side by side keep the cores busy. Each thread holds two runs' scores
# (16 MB a million rows), so no more threads than cores.
CHECK_THREADS = 2


def check_runs(committed: list[ScoringRun]) -> None:
    """Compute and store each run's quality; a failed check never fails the run.

    The database is queried from this thread only: the checking threads read S3 and compute.
    """
    if not committed:
        return
    started = time.perf_counter()
    table = scores.open_table()
    with ThreadPoolExecutor(max_workers=CHECK_THREADS, thread_name_prefix="checks") as pool:
        checking = []
        for run in committed:
            try:
                baseline = previous_run(run)
                checking.append((run, pool.submit(measure, run, baseline, thresholds(run), table)))
            except Exception:
                log.exception("the quality checks of run %s failed", run.id)
        for run, measured in checking:
            try:
                result = measured.result()
            except Exception:
                log.exception("the quality checks of run %s failed", run.id)
                continue
            ScoringRun.objects.filter(id=run.id).update(
                quality=result, quality_status=result["status"]
            )
    log.info("checked %d runs in %.2f s", len(committed), time.perf_counter() - started)


def previous_run(run: ScoringRun) -> ScoringRun | None:
    """The baseline run: the model's latest succeeded run of an earlier date."""
    return (
        ScoringRun.objects.filter(
            deployment_id=run.deployment_id, status=ScoringRun.SUCCEEDED, date__lt=run.date
        )
        .select_related("version")  # its features, read by a checking thread
        .order_by("-date", "-id")
        .first()
    )


def thresholds(run: ScoringRun) -> dict:
    """The package's own thresholds, else the settings'."""
    params = run.version.package.get("params", {})
    return {
        name: params.get(name, getattr(settings, name.upper()))
        for name in ("psi_warn", "psi_alert", "adversarial_warn", "adversarial_alert")
    }


def measure(run: ScoringRun, previous: ScoringRun | None, limits: dict, table) -> dict:
    """The quality dict of `run` against `previous`, else its version's reference scores."""
    started = time.perf_counter()
    baseline_scores = baseline_sample = baseline = None
    if previous is not None:
        baseline_scores = score_values(table, previous)
        baseline_sample = samples.load(previous, settings.QUALITY_SAMPLE_ROWS)
        baseline = {
            "kind": "run",
            "run_id": previous.id,
            "date": previous.date.isoformat(),
            "rows": len(baseline_scores),
        }
    else:
        baseline_scores = samples.load_reference(run.version_id)
        if baseline_scores is not None:
            baseline = {"kind": "reference_scores", "rows": len(baseline_scores)}
    # Features are compared only with a baseline run's sample: without one, none is read.
    current_sample = (
        None if baseline_sample is None else samples.load(run, settings.QUALITY_SAMPLE_ROWS)
    )
    return quality.compare(
        score_values(table, run),
        baseline_scores,
        current_sample,
        baseline_sample,
        limits,
        baseline,
        started,
    )


def score_values(table, run: ScoringRun) -> np.ndarray:
    """All the run's scores, filled batch by batch into one array of its recorded rows:
    batches kept and then concatenated would hold them twice."""
    values = np.empty(run.rows or 0)
    filled = 0
    for batch in scores.run_scores(run, columns=("score",), table=table):
        if filled + batch.num_rows > values.size:
            raise ValueError(f"the scores table holds more rows of run {run.id} than it recorded")
        values[filled : filled + batch.num_rows] = batch.column(0).to_numpy()
        filled += batch.num_rows
    return values[:filled]  # fewer: its partition holds a newer run's
