"""The data-quality checks of committed runs: find the baseline, gather both sides, store the result.

The baseline is the model's previous committed partition (its latest succeeded run of an
earlier date), else the package's `reference_scores`. Scores come from the scores table
(both partitions, the score column only); features come from the row samples the runs
kept while they scored (scoring.samples), so the slice is never read twice. The metrics
themselves are plain functions in scoring.quality.
"""

import logging
import time

import numpy as np
from django.conf import settings

from scoring import quality, samples, scores
from scoring.models import ScoringRun

log = logging.getLogger(__name__)


def check_runs(committed: list[ScoringRun]) -> None:
    """Compute and store each run's quality; a failed check never fails the run."""
    if not committed:
        return
    table = scores.open_table()
    for run in committed:
        try:
            check_run(run, table)
        except Exception:
            log.exception("the quality checks of run %s failed", run.id)


def check_run(run: ScoringRun, table=None) -> dict:
    started = time.perf_counter()
    table = table or scores.open_table()
    previous = (
        ScoringRun.objects.filter(
            deployment_id=run.deployment_id, status=ScoringRun.SUCCEEDED, date__lt=run.date
        )
        .order_by("-date", "-id")
        .first()
    )
    baseline_scores = baseline_sample = baseline = None
    if previous is not None:
        baseline_scores = score_values(table, previous)
        baseline_sample = samples.load(previous.id, settings.QUALITY_SAMPLE_ROWS)
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
    params = run.version.package.get("params", {})
    thresholds = {
        name: params.get(name, getattr(settings, name.upper()))
        for name in ("psi_warn", "psi_alert", "adversarial_warn", "adversarial_alert")
    }
    result = quality.compare(
        score_values(table, run),
        baseline_scores,
        samples.load(run.id, settings.QUALITY_SAMPLE_ROWS),
        baseline_sample,
        thresholds,
        baseline,
        started,
    )
    ScoringRun.objects.filter(id=run.id).update(quality=result, quality_status=result["status"])
    return result


def score_values(table, run: ScoringRun) -> np.ndarray:
    batches = list(scores.run_scores(run, columns=("score",), table=table))
    if not batches:
        return np.empty(0)
    return np.concatenate([batch.column(0).to_numpy() for batch in batches])
