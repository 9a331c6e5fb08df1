"""Data quality of one scoring run against its baseline.

The baseline is the previous run of the same model, or the package's
`reference_scores` on the first run. Plain functions of numpy arrays and pandas
frames: no Django here, the engine passes everything in and stores what
`compare` returns on the run (`ScoringRun.quality`), where the model's page, the
API and the report emails read it. Its shape, JSON-able (no numpy types, no NaN):

    {
      "status": "ok" | "warning" | "alert",        # worst of the statuses below
      "baseline": {...} | None,                     # the descriptor passed in, e.g.
                                                    # {"kind": "run", "run_id": 12, "date": "2026-11-22", "rows": 98000}
                                                    # {"kind": "reference_scores", "rows": 5000}
      "rows": 100000, "baseline_rows": 98000 | None,  # baseline_rows only when the baseline is a run
      "rows_change": 0.0204 | None,                 # relative change vs baseline rows
      "rows_status": "ok" | "warning" | "alert" | None,  # |change| > 20% warning, > 50% alert
      "psi": 0.012 | None, "psi_status": ... | None,
      "adversarial_auc": 0.51 | None, "adversarial_auc_stderr": 0.006 | None, "adversarial_status": ... | None,
      "adversarial_rows": 5000 | None,              # rows per side it used
      "features": [{"name": "age", "psi": 0.31, "status": "alert"}, ...],   # top 5 drifting, most first
      "missing_share": 0.0, "missing_status": "ok" | "warning" | "alert",   # NaN/inf scores; > 0 warning, > 1% alert
      "constant": false, "constant_status": "ok" | "alert",              # all finite scores equal
      "histogram": {"edges": [...], "current": [...], "baseline": [...] | None},
      "thresholds": {"psi_warn": 0.1, "psi_alert": 0.25, "adversarial_warn": 0.6, "adversarial_alert": 0.65},
      "seconds": 0.41                               # time compare took
    }
"""

import math
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from scoring.quality import adversarial, profiles
from scoring.quality.levels import ALERT, OK, above, level, worst

_MISSING = "\x00missing"  # a category no real value spells


def psi(
    baseline: np.ndarray,
    current: np.ndarray,
    bins: int = 10,
    epsilon: float = 1e-4,
    *,
    missing: bool = False,
) -> float:
    """Population Stability Index: sum((a - e) * ln(a / e)) over bins.

    Bins are cut at the baseline's quantiles (bins of (e[i-1], e[i]], as pandas.qcut),
    equal edges merged, so a point mass such as many 0 scores keeps one bin of its own.
    The outer bins are open to -inf and +inf: values outside the baseline's range count.
    An empty bin gets `epsilon` share so the log stays finite. Non-finite values are
    ignored, or with `missing=True` counted in one bin of their own (for features, where
    a column going missing is drift; missing scores are checked on their own).
    NaN when a side has nothing to count.
    """
    b = _floats(baseline)
    c = _floats(current)
    b_finite, c_finite = _finite(b), _finite(c)
    b_total, c_total = (b.size, c.size) if missing else (b_finite.size, c_finite.size)
    if b_total == 0 or c_total == 0:
        return math.nan
    if b_finite.size:
        edges = np.unique(np.quantile(b_finite, np.linspace(0, 1, bins + 1))[1:-1])
    else:
        edges = np.empty(0)
    expected = profiles.bin_counts(b_finite, edges) / b_total
    actual = profiles.bin_counts(c_finite, edges) / c_total
    if missing:
        expected = np.append(expected, (b.size - b_finite.size) / b_total)
        actual = np.append(actual, (c.size - c_finite.size) / c_total)
    return profiles.psi_of_shares(expected, actual, epsilon)


def categorical_psi(baseline, current, epsilon: float = 1e-4) -> float:
    """PSI with one bin per category of either side; missing values are a category."""
    b, c = _category_shares(baseline), _category_shares(current)
    if b is None or c is None:
        return math.nan
    shares = pd.concat([b, c], axis=1).fillna(0.0).to_numpy()
    return profiles.psi_of_shares(shares[:, 0], shares[:, 1], epsilon)


def feature_psi(
    baseline: pd.DataFrame,
    current: pd.DataFrame,
    top: int = 5,
    known: dict | None = None,
    columns: list | None = None,
    importance: dict[str, float] | None = None,
) -> list[dict]:
    """The `top` most drifting of `columns` (default: all common columns) of both frames
    as {"name", "psi"}, most first.

    Numeric and datetime columns by `psi` (missing values as a bin), others by
    `categorical_psi`. `known` holds PSIs already computed for columns of these same two
    frames and gets the new ones: the runs of a slice share their samples' columns.
    With the model's `importance` ({name: share of the whole}), each item carries its
    share and they rank by PSI times share: a feature the model barely uses may move a
    lot and matter less than one it leans on that moved a little.
    """
    known = {} if known is None else known
    drift = []
    for name in _common_columns(baseline, current) if columns is None else columns:
        if name not in known:
            b, c = baseline[name], current[name]
            if adversarial.is_numeric(b) and adversarial.is_numeric(c):
                known[name] = psi(adversarial.numeric(b), adversarial.numeric(c), missing=True)
            else:
                known[name] = categorical_psi(b, c)
        value = known[name]
        if not math.isnan(value):
            item = {"name": str(name), "psi": value}
            if importance is not None:
                item["importance"] = float(importance.get(name, 0.0))
            drift.append(item)
    drift.sort(key=lambda item: item["psi"] * item.get("importance", 1.0), reverse=True)
    return drift[:top]


def adversarial_auc(
    baseline: pd.DataFrame, current: pd.DataFrame, *, rows: int = adversarial.ROWS, seed: int = 0
) -> tuple[float, float]:
    """How well a classifier tells current rows from baseline rows over their common
    columns: (ROC AUC, its SE), as scoring.quality.adversarial measures it for the runs of
    a slice. (nan, nan) with fewer than 50 rows a side or no common column. Callers leave
    out columns that differ by construction, such as the slice date or the entity id."""
    pair = adversarial.SamplePair(baseline, current, rows=rows, seed=seed)
    return pair.auc(_common_columns(baseline, current))


def compare(
    *,
    current_scores: np.ndarray,
    baseline_scores: np.ndarray | None,
    current_sample: pd.DataFrame | None,
    baseline_sample: pd.DataFrame | None,
    thresholds: dict,
    baseline: dict | None,
    seconds_start: float | None = None,
    importance: dict[str, float] | None = None,
) -> dict:
    """The quality dict of a run from all its scores and its baseline's (or the reference
    scores), and feature rows of both with a `score` column: `compare_profiles` of their
    exact profiles and of the two samples; `importance` weighs the features' drift."""
    baseline_profile = None if baseline_scores is None else profiles.summarize(baseline_scores)
    against = ((baseline_profile or {}).get("deciles") or {}).get("edges")
    samples = None
    if current_sample is not None and baseline_sample is not None:
        features = [c for c in _common_columns(baseline_sample, current_sample) if c != "score"]
        scores = None
        if "score" in baseline_sample and "score" in current_sample:
            scores = (baseline_sample["score"].to_numpy(), current_sample["score"].to_numpy())
        pair = adversarial.SamplePair(baseline_sample, current_sample)
        samples = Samples(pair, features, scores, importance=importance)
    return compare_profiles(
        current_profile=profiles.summarize(current_scores, against),
        baseline_profile=baseline_profile,
        samples=samples,
        thresholds=thresholds,
        baseline=baseline,
        seconds_start=seconds_start,
    )


@dataclass
class Samples:
    """A run's rows of the two slice samples: the pair (shared by the runs of the two
    slices, with the drift of their columns), its features, and its (baseline, current)
    scores on the pair's rows, None when a side has none."""

    pair: adversarial.SamplePair
    features: list[str]
    scores: tuple[np.ndarray, np.ndarray] | None
    drift: dict = field(default_factory=dict)  # feature_psi's `known`, shared by the runs
    importance: dict[str, float] | None = None  # the model's, {name: share}, when measured


def compare_profiles(
    *,
    current_profile: dict,
    baseline_profile: dict | None,
    samples: Samples | None,
    thresholds: dict,
    baseline: dict | None,
    seconds_start: float | None = None,
    baseline_rows_scale: float = 1.0,
) -> dict:
    """The quality dict of a run (shape in the module docstring).

    The scores' checks come from the profiles of the run's scores and of its baseline's
    (scoring.quality.profiles): nothing is read back or binned again. The features' checks
    come from `samples`, when the baseline is a run that kept one. Rows are compared only
    when the baseline is a run: reference scores are a sample of any size.
    `seconds_start` is a time.perf_counter() value, for a caller that wants "seconds" to
    include loading the inputs. `baseline_rows_scale`: the share of the slice this run
    scores over the baseline's (a traffic split's sides), by which the baseline's rows are
    expected to change; `baseline_rows` is the baseline's rows so scaled.
    """
    start = time.perf_counter() if seconds_start is None else seconds_start
    rows = current_profile["rows"]
    finite = profiles.finite_count(current_profile)

    baseline_rows = rows_change = None
    if baseline_profile is not None and (baseline or {}).get("kind") == "run":
        baseline_rows = round(baseline_profile["rows"] * baseline_rows_scale)
        if baseline_rows:
            rows_change = rows / baseline_rows - 1.0

    score_psi = None
    if baseline_profile is not None:
        score_psi = profiles.psi(baseline_profile, current_profile)
    psi_status = level(score_psi, thresholds["psi_warn"], thresholds["psi_alert"])

    auc = stderr = adversarial_rows = None
    features: list[dict] = []
    if samples is not None:
        auc, stderr = samples.pair.auc(samples.features, samples.scores)
        if not math.isnan(auc):
            adversarial_rows = samples.pair.rows
        pair = samples.pair
        features = [
            {
                **item,
                "psi": round(item["psi"], 4),
                "status": level(item["psi"], thresholds["psi_warn"], thresholds["psi_alert"]),
            }
            for item in feature_psi(
                pair.baseline,
                pair.current,
                known=samples.drift,
                columns=samples.features,
                importance=samples.importance,
            )
        ]
    adversarial_status = level(auc, thresholds["adversarial_warn"], thresholds["adversarial_alert"])

    missing_share = (rows - finite) / rows if rows else 0.0
    constant = bool(finite > 1 and current_profile["min"] == current_profile["max"])

    statuses = {
        "rows_status": above(None if rows_change is None else abs(rows_change), 0.2, 0.5),
        "psi_status": psi_status,
        "adversarial_status": adversarial_status,
        "missing_status": above(missing_share, 0.0, 0.01),
        "constant_status": ALERT if constant else OK,
    }
    return {
        "status": worst([*statuses.values(), *(item["status"] for item in features)]),
        "baseline": baseline,
        "rows": rows,
        "baseline_rows": baseline_rows,
        "rows_change": _rounded(rows_change, 4),
        "rows_status": statuses["rows_status"],
        "psi": _rounded(score_psi, 4),
        "psi_status": psi_status,
        "adversarial_auc": _rounded(auc, 4),
        "adversarial_auc_stderr": _rounded(stderr, 4),
        "adversarial_status": adversarial_status,
        "adversarial_rows": adversarial_rows,
        "features": features,
        "missing_share": round(missing_share, 6),
        "missing_status": statuses["missing_status"],
        "constant": constant,
        "constant_status": statuses["constant_status"],
        "histogram": profiles.display_histogram(baseline_profile, current_profile),
        "thresholds": {
            key: float(thresholds[key])
            for key in ("psi_warn", "psi_alert", "adversarial_warn", "adversarial_alert")
        },
        "seconds": round(time.perf_counter() - start, 3),
    }


# --- helpers -------------------------------------------------------------------


def _floats(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).ravel()  # no copy when already float64


def _finite(values: np.ndarray) -> np.ndarray:
    mask = np.isfinite(values)
    return values if mask.all() else values[mask]  # copy only when something is missing


def _category_shares(values) -> pd.Series | None:
    series = pd.Series(values).astype(object)
    if series.empty:
        return None
    return series.where(series.notna(), _MISSING).value_counts(normalize=True)


def _common_columns(baseline: pd.DataFrame, current: pd.DataFrame) -> list:
    present = set(baseline.columns)
    return [name for name in current.columns if name in present]


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), digits)
