"""The data-quality checks of committed runs: find the baseline, gather both sides, store the result.

The baseline is the model's previous committed partition (its latest succeeded run of an
earlier date), else the package's `reference_scores`. Scores are compared through the
profiles the runs kept while they wrote them (scoring.quality.profiles, stored on the run):
neither partition is read back. Only a run without a profile (scored before profiles
were kept) has its scores read from the table. Features come from the row samples the
runs kept while they scored (scoring.quality.samples), so the slice is never read twice;
a slice's sample is read once for all its runs. The metrics themselves are plain
functions in scoring.quality.metrics.
"""

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
from django.conf import settings
from django.db.models import OuterRef, Subquery

from scoring.models import ScoringRun
from scoring.quality import adversarial, levels, metrics, profiles, samples

log = logging.getLogger(__name__)
# Reading both sides from S3 and the metrics (numpy, the adversarial model) release the
# GIL: runs checked side by side keep the cores busy. Each thread holds two runs' scores
# (16 MB a million rows), so no more threads than cores.
CHECK_THREADS = 2


# A run's score column from the scores table, batch by batch. The table is the engine's: it
# hands the checks its reader (scoring.engine.scores.score_reader).
ScoreReader = Callable[[ScoringRun], Iterator[pa.RecordBatch]]


def check_runs(committed: list[ScoringRun], read_scores: ScoreReader) -> None:
    """Compute and store each run's quality; a failed check never fails the run.

    The database is queried from this thread only: the checking threads read S3 and compute.
    Each slice's sample is read once, and each feature's drift between two samples
    computed once, for all the runs that share them.
    """
    if not committed:
        return
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=CHECK_THREADS, thread_name_prefix="checks") as pool:
        try:
            baselines = previous_runs(committed)
        except Exception:
            log.exception("the quality checks of runs %s failed", [r.id for r in committed])
            return
        slices = SliceSamples(
            load_samples(pool, [r for r in committed if baselines.get(r.id)], baselines)
        )
        checking = []
        for run in committed:
            arguments = (run, baselines[run.id], thresholds(run), read_scores, slices)
            checking.append((run, pool.submit(measure, *arguments)))
        checked = []
        for run, measured in checking:
            try:
                run.quality = measured.result()
            except Exception:
                log.exception("the quality checks of run %s failed", run.id)
                continue
            run.quality_status = run.quality["status"]
            checked.append(run)
        ScoringRun.objects.bulk_update(checked, ["quality", "quality_status"], batch_size=500)
    log.info("checked %d runs in %.2f s", len(committed), time.perf_counter() - started)


def slice_of(run: ScoringRun) -> tuple[int, date]:
    """Which sample holds the run's rows: its batch's, of its date."""
    return run.batch_id, run.date


def load_samples(pool, compared: list[ScoringRun], baselines: dict) -> dict[tuple, Future]:
    """Start reading the samples that the runs with a baseline run compare, each once,
    with the columns of all its runs."""
    columns = defaultdict(dict)  # ordered sets
    for run in [*compared, *(baselines[r.id] for r in compared)]:
        for name in [*run.version.package["features"], f"score:{run.id}"]:
            columns[slice_of(run)][name] = None
    return {
        key: pool.submit(samples.load, *key, list(names), settings.QUALITY_SAMPLE_ROWS)
        for key, names in columns.items()
    }


class SliceSamples:
    """The slices' samples being read, and what the runs of two slices share: each slice's
    features as one frame, and each pair of slices' adversarial columns and feature drift.
    Made once, whichever checking thread asks first."""

    def __init__(self, loading: dict[tuple, Future]):
        self.loading = loading
        self.lock = threading.Lock()
        self.frames: dict[tuple, pd.DataFrame | None] = {}
        self.pairs: dict[tuple, metrics.Samples | None] = {}

    def table(self, key: tuple) -> pa.Table | None:
        return self.loading[key].result()

    def frame(self, key: tuple) -> pd.DataFrame | None:
        table = self.table(key)
        if key not in self.frames:
            features = (
                [n for n in table.column_names if not n.startswith("score:")] if table else []
            )
            self.frames[key] = None if table is None else table.select(features).to_pandas()
        return self.frames[key]

    def pair(self, previous: ScoringRun, run: ScoringRun) -> metrics.Samples | None:
        """The two slices' shared comparison, None when either kept no sample."""
        key = slice_of(previous), slice_of(run)
        with self.lock:
            if key not in self.pairs:
                baseline, current = self.frame(key[0]), self.frame(key[1])
                self.pairs[key] = None
                if baseline is not None and current is not None:
                    self.pairs[key] = metrics.Samples(
                        adversarial.SamplePair(baseline, current), [], None
                    )
            return self.pairs[key]

    def samples(self, previous: ScoringRun, run: ScoringRun) -> metrics.Samples | None:
        """The run's part of the two samples: its features and both runs' scores."""
        shared = self.pair(previous, run)
        if shared is None:
            return None
        scores = self.score(previous), self.score(run)
        return metrics.Samples(
            shared.pair,
            [name for name in run.version.package["features"] if name in shared.pair.current],
            None if any(side is None for side in scores) else scores,
            shared.drift,
            importance_shares(run.version.package),
        )

    def score(self, run: ScoringRun) -> np.ndarray | None:
        table = self.table(slice_of(run))
        name = f"score:{run.id}"
        if name not in table.column_names:
            return None
        return table.column(name).to_numpy(zero_copy_only=False)  # nulls: NaN


def previous_runs(runs: list[ScoringRun]) -> dict[int, ScoringRun | None]:
    """Each run's baseline run: its model's latest succeeded run of an earlier date in the
    same role (a challenger is compared with the challengers before it, the champion's
    partition with the champion's). Two queries for any number of runs."""
    latest = (
        ScoringRun.objects.filter(
            deployment_id=OuterRef("deployment_id"),
            role=OuterRef("role"),
            status=ScoringRun.Status.SUCCEEDED,
            date__lt=OuterRef("date"),
        )
        .order_by("-date", "-id")
        .values("id")[:1]
    )
    previous_ids = dict(
        ScoringRun.objects.filter(id__in=[run.id for run in runs])
        .annotate(previous=Subquery(latest))
        .values_list("id", "previous")
    )
    found = ScoringRun.objects.select_related("version").in_bulk(
        [previous for previous in previous_ids.values() if previous]
    )  # their features are read by a checking thread
    return {run.id: found.get(previous_ids.get(run.id)) for run in runs}


def baseline_edges(runs: list[ScoringRun]) -> dict[int, list[float] | None]:
    """The bins each run's scores will be compared in: its baseline's deciles (the previous
    run's profile, else the reference scores'); None without a baseline, or when the
    previous run kept no profile. Known before the run scores, so it counts its scores in
    them while it writes them."""
    previous = previous_runs(runs)
    edges = {}
    for run in runs:
        if previous[run.id] is not None:
            deciles = (previous[run.id].profile or {}).get("deciles")
            edges[run.id] = deciles["edges"] if deciles else None
        else:
            edges[run.id] = None
    first = {run.version_id for run in runs if previous[run.id] is None and has_reference(run)}
    with ThreadPoolExecutor(max_workers=8) as pool:
        references = dict(zip(first, pool.map(reference_edges, first), strict=True))
    for run in runs:
        if previous[run.id] is None:
            edges[run.id] = references.get(run.version_id)
    return edges


def reference_edges(version_id: int) -> list[float] | None:
    """The deciles of a version's reference scores; None if they cannot be read now (the
    check reads them again, and counts the run's scores from its profile)."""
    try:
        reference = samples.load_reference(version_id)
    except Exception:
        log.exception("the reference scores of version %s could not be read", version_id)
        return None
    finite = None if reference is None else reference[np.isfinite(reference)]
    return profiles.decile_edges(finite).tolist() if finite is not None and finite.size else None


def importance_shares(package: dict) -> dict[str, float] | None:
    """The model's importance of its features as validation measured it, if it did."""
    measured = (package.get("importance") or {}).get("features")
    return {item["name"]: item["share"] for item in measured} if measured else None


def has_reference(run: ScoringRun) -> bool:
    return bool(run.version.package.get("reference_scores_count"))


def thresholds(run: ScoringRun) -> dict:
    """The package's own thresholds, else the site's."""
    return levels.thresholds(run.version.package.get("params"))


def measure(
    run: ScoringRun,
    previous: ScoringRun | None,
    limits: dict,
    read_scores: ScoreReader,
    slices: SliceSamples,
) -> dict:
    """The quality dict of `run` against `previous`, else its version's reference scores."""
    started = time.perf_counter()
    baseline_profile = baseline = compared = None
    if previous is not None:
        baseline_profile = profile_of(read_scores, previous)
        baseline = {
            "kind": "run",
            "run_id": previous.id,
            "date": previous.date.isoformat(),
            "rows": baseline_profile["rows"],
        }
        # Features are compared only with a baseline run's sample.
        compared = slices.samples(previous, run)
    elif has_reference(run):
        reference = samples.load_reference(run.version_id)
        if reference is not None:
            baseline_profile = profiles.summarize(reference)
            baseline = {"kind": "reference_scores", "rows": len(reference)}
    return metrics.compare_profiles(
        current_profile=profile_of(read_scores, run, baseline_profile),
        baseline_profile=baseline_profile,
        samples=compared,
        thresholds=limits,
        baseline=baseline,
        seconds_start=started,
        baseline_rows_scale=rows_scale(run, previous),
    )


def rows_scale(run: ScoringRun, previous: ScoringRun | None) -> float:
    """How the run's rows should compare with its baseline run's: a traffic split scores a
    side of the slice (a challenger at share 0.3 has 30% of a full run's rows)."""
    before = 1.0 if previous is None else previous.kept_share
    return run.kept_share / before if before else 1.0


def profile_of(read_scores: ScoreReader, run: ScoringRun, baseline: dict | None = None) -> dict:
    """The run's stored profile; the profile of its scores read back if it has none (it
    scored before profiles were kept), counted in the `baseline` profile's bins."""
    if run.profile is not None:
        return run.profile
    against = ((baseline or {}).get("deciles") or {}).get("edges")
    return profiles.summarize(score_values(read_scores, run), against)


def score_values(read_scores: ScoreReader, run: ScoringRun) -> np.ndarray:
    """All the run's scores, filled batch by batch into one array of its recorded rows:
    batches kept and then concatenated would hold them twice."""
    values = np.empty(run.rows or 0)
    filled = 0
    for batch in read_scores(run):
        if filled + batch.num_rows > values.size:
            raise ValueError(f"the scores table holds more rows of run {run.id} than it recorded")
        values[filled : filled + batch.num_rows] = batch.column(0).to_numpy()
        filled += batch.num_rows
    return values[:filled]  # fewer: its partition holds a newer run's
