"""How well scores ranked the outcomes once they were known: plain functions of two arrays.

Classifiers: ROC AUC and Gini (2 AUC - 1, scikit-learn), KS (the largest distance between
the score distributions of positives and negatives, scipy), the share of positives and
calibration by score decile (mean score against observed rate). Regressors: RMSE and MAE.
Each with a percentile bootstrap interval (scipy), resampling (outcome, score) pairs. A
resample of a million pairs costs seconds, so a larger run is resampled from a sample of
BOOTSTRAP_ROWS pairs: its interval is as wide as that sample's (wider than the full data's,
never narrower), moved to sit around the estimate of all the pairs.
"""

import numpy as np
from scipy import stats
from sklearn.metrics import mean_absolute_error, roc_auc_score, roc_curve, root_mean_squared_error

CONFIDENCE = 0.95
RESAMPLES = 200
BOOTSTRAP_ROWS = 50_000
DECILES = 10


def classification(*, outcomes, scores, seed: int = 0) -> dict:
    """AUC, Gini, KS with intervals, the share of positives, calibration by decile."""
    y, s = binary(outcomes), np.asarray(scores, dtype="float64")
    if y.min() == y.max():
        raise ValueError("the outcomes are all one class: AUC and KS need both")
    auc = float(roc_auc_score(y, s))
    ks = float(stats.ks_2samp(s[y == 1], s[y == 0]).statistic)
    (auc_low, ks_low), (auc_high, ks_high) = interval(ranking, y, s, seed)
    return {
        "auc": auc,
        "auc_interval": [auc_low, auc_high],
        "gini": gini(auc),
        "gini_interval": [gini(auc_low), gini(auc_high)],
        "ks": ks,
        "ks_interval": [ks_low, ks_high],
        "positive_share": float(y.mean()),
        "calibration": calibration(outcomes=y, scores=s),
    }


def regression(*, outcomes, scores, seed: int = 0) -> dict:
    y, s = np.asarray(outcomes, dtype="float64"), np.asarray(scores, dtype="float64")
    (rmse_low, mae_low), (rmse_high, mae_high) = interval(errors, y, s, seed)
    return {
        "rmse": float(root_mean_squared_error(y, s)),
        "rmse_interval": [rmse_low, rmse_high],
        "mae": float(mean_absolute_error(y, s)),
        "mae_interval": [mae_low, mae_high],
    }


def ranking(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """AUC and KS of one resample from one ROC curve: KS is its largest TPR - FPR."""
    if y.min() == y.max():
        return np.array([np.nan, np.nan])
    fpr, tpr, _ = roc_curve(y, s)
    return np.array([np.trapezoid(tpr, fpr), np.max(tpr - fpr)])


def errors(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    return np.array([root_mean_squared_error(y, s), mean_absolute_error(y, s)])


def interval(statistic, y: np.ndarray, s: np.ndarray, seed: int) -> tuple[list, list]:
    """The percentile bootstrap interval of each of the statistic's values: (lows, highs)."""
    rng = np.random.default_rng(seed)
    shift = 0.0
    if len(y) > BOOTSTRAP_ROWS:
        keep = rng.choice(len(y), BOOTSTRAP_ROWS, replace=False)
        shift = statistic(y, s) - statistic(y[keep], s[keep])
        y, s = y[keep], s[keep]
    result = stats.bootstrap(
        (y, s),
        statistic,
        paired=True,
        vectorized=False,
        n_resamples=RESAMPLES,
        confidence_level=CONFIDENCE,
        method="percentile",
        rng=rng,
    )
    low, high = (np.atleast_1d(bound) + shift for bound in result.confidence_interval)
    return [finite(v) for v in low], [finite(v) for v in high]


def finite(value) -> float | None:
    """None where the resamples could not tell (a sample of one class): JSON has no NaN."""
    return float(value) if np.isfinite(value) else None


def gini(auc: float | None) -> float | None:
    return None if auc is None else 2 * auc - 1


def calibration(*, outcomes, scores, bins: int = DECILES) -> list[dict]:
    """Rows grouped by score decile (equal counts, ties kept together): each group's score
    range, rows, mean score and observed rate of positives."""
    y, s = np.asarray(outcomes, dtype="float64"), np.asarray(scores, dtype="float64")
    edges = np.unique(np.quantile(s, np.linspace(0, 1, bins + 1)))
    index = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, len(edges) - 2)
    found = []
    for group in range(max(len(edges) - 1, 1)):
        members = index == group
        if members.any():
            found.append(
                {
                    "low": float(s[members].min()),
                    "high": float(s[members].max()),
                    "rows": int(members.sum()),
                    "mean_score": float(s[members].mean()),
                    "observed_rate": float(y[members].mean()),
                }
            )
    return found


def binary(outcomes) -> np.ndarray:
    """Outcomes as 0/1: booleans, or numbers that are all 0 or 1."""
    y = np.asarray(outcomes)
    values = set(np.unique(y).tolist())
    if not values <= {0, 1}:
        shown = ", ".join(map(str, sorted(values, key=str)[:5]))
        raise ValueError(f"a classifier's target must be 0 or 1; it holds {shown}")
    return y.astype("int8")
