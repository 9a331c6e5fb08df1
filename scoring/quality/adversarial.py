"""Adversarial validation cheap enough for a fleet: how well current rows can be told from
baseline rows, for every model of a slice, with the work on the slice's columns shared.

The classifier is naive Bayes on binned columns: each column's evidence for a row is the
log ratio of its bin's share among current and among baseline rows, learnt on the other
fold; a model's score of a row is the sum of its columns' evidence (and its own score's),
and the out-of-fold ROC AUC of that score is the result (0.5 = no drift). A column's
evidence depends on the rows and folds only, which the runs of a slice share (one sample
per slice), so it is computed once per slice pair and each model adds its columns up:
about 1 ms a model, where a gradient-boosted classifier per model cost 90 ms
(bench/quality_bench.py). It sees the drift of each column and of their sum, as the
per-feature PSI does, not drift in how columns combine (a correlation that changes while
the columns' own distributions stay), which the trees could.
"""

import math

import numpy as np
import pandas as pd

ROWS = 5000  # per side: 5,000 + 5,000 out-of-fold scores give SE ~0.006 at AUC 0.5
FOLDS = 2
MIN_ROWS = 50
BINS = 16  # quantile bins of a numeric column, plus one for missing values
MAX_CATEGORIES = 63  # rarer categories share one bin
PRIOR = 1.0  # rows added to every bin of each side: evidence of near-empty bins stays small


class SamplePair:
    """`rows` random rows of each side (fewer if a side has fewer; equal sizes so 0.5
    means no drift), split into stratified folds, and each column's evidence, computed
    once however many models use it. Threads racing on a column only compute it twice."""

    def __init__(self, baseline: pd.DataFrame, current: pd.DataFrame, rows: int = ROWS, seed=0):
        self.rows = min(rows, len(baseline), len(current))
        rng = np.random.default_rng(seed)
        self.taken = (
            np.sort(rng.choice(len(baseline), self.rows, replace=False)),
            np.sort(rng.choice(len(current), self.rows, replace=False)),
        )
        self.baseline, self.current = baseline, current
        y = np.repeat([0, 1], self.rows)
        fold = np.concatenate(
            [rng.permutation(self.rows) % FOLDS, rng.permutation(self.rows) % FOLDS]
        )
        # Per fold: the rows it scores, and the baseline and current rows it learns from.
        self.folds = [
            (
                np.flatnonzero(fold == k),
                np.flatnonzero((fold != k) & (y == 0)),
                np.flatnonzero((fold != k) & (y == 1)),
            )
            for k in range(FOLDS)
        ]
        self.known: dict[str, np.ndarray] = {}

    def column(self, name: str) -> np.ndarray:
        """The out-of-fold evidence of one column of both frames, per row taken."""
        if name not in self.known:
            self.known[name] = self.evidence(
                self.baseline[name].iloc[self.taken[0]], self.current[name].iloc[self.taken[1]]
            )
        return self.known[name]

    def evidence(self, baseline: pd.Series | np.ndarray, current: pd.Series | np.ndarray):
        """Out-of-fold evidence of a column given as its values on the rows taken."""
        if isinstance(baseline, np.ndarray) and isinstance(current, np.ndarray):
            codes, bins = numbers_binned(np.concatenate([baseline, current]).astype(np.float64))
        else:
            codes, bins = binned(
                pd.concat([pd.Series(baseline), pd.Series(current)], ignore_index=True)
            )
        evidence = np.empty(2 * self.rows)
        for test, train_baseline, train_current in self.folds:
            base = np.bincount(codes[train_baseline], minlength=bins) + PRIOR
            cur = np.bincount(codes[train_current], minlength=bins) + PRIOR
            ratio = np.log(cur / cur.sum()) - np.log(base / base.sum())
            evidence[test] = ratio[codes[test]]
        return evidence

    def auc(self, columns: list[str], scores: tuple | None = None) -> tuple[float, float]:
        """(ROC AUC, its SE) of telling current from baseline rows by `columns` and, if
        given, the model's (baseline, current) scores on all the sample's rows.
        (nan, nan) with fewer than MIN_ROWS rows a side or nothing to compare."""
        if self.rows < MIN_ROWS or not (columns or scores):
            return math.nan, math.nan
        total = np.zeros(2 * self.rows)
        for name in columns:
            total += self.column(name)
        if scores is not None:
            baseline, current = scores
            total += self.evidence(
                np.asarray(baseline)[self.taken[0]], np.asarray(current)[self.taken[1]]
            )
        auc = mann_whitney_auc(total, self.rows)
        return auc, hanley_mcneil(auc, self.rows, self.rows)


def binned(values: pd.Series) -> tuple[np.ndarray, int]:
    """Bin codes of a column's values and the number of bins. Numbers and datetimes by
    quantiles of all its rows (labels unseen, so nothing leaks), missing and infinite
    values in a bin of their own; categories by frequency, past MAX_CATEGORIES sharing one."""
    if is_numeric(values):
        return numbers_binned(numeric(values))
    codes, _ = pd.factorize(values.astype(object))
    counts = np.bincount(codes[codes >= 0], minlength=1)
    rank = np.empty(counts.size, dtype=np.int64)
    rank[np.argsort(-counts, kind="stable")] = np.arange(counts.size)
    rank = np.minimum(rank, MAX_CATEGORIES - 1)
    return np.where(codes >= 0, rank[np.maximum(codes, 0)], MAX_CATEGORIES), MAX_CATEGORIES + 1


def numbers_binned(numbers: np.ndarray) -> tuple[np.ndarray, int]:
    present = np.isfinite(numbers)
    edges = np.empty(0)
    if present.any():
        # Bins only need to hold similar shares: quantiles of a quarter of the rows do.
        finite = numbers[present]
        sample = finite[:: max(1, finite.size // 2500)]
        edges = np.unique(np.quantile(sample, np.linspace(0, 1, BINS + 1)[1:-1]))
    codes = np.where(present, np.searchsorted(edges, numbers, side="left"), edges.size + 1)
    return codes, edges.size + 2


def mann_whitney_auc(scores: np.ndarray, rows: int) -> float:
    """ROC AUC of `scores` whose first `rows` are baseline rows and the rest current ones,
    ties counted half (the scores are sums of a few bins' evidence: ties are common)."""
    values, position = np.unique(scores, return_inverse=True)
    baseline = np.bincount(position[:rows], minlength=values.size)
    current = np.bincount(position[rows:], minlength=values.size)
    below = np.cumsum(baseline) - baseline  # baseline rows scored lower than each value
    pairs = np.sum(current * (below + 0.5 * baseline))
    return float(pairs / (rows * (scores.size - rows)))


def is_numeric(column: pd.Series) -> bool:
    dtype = column.dtype
    return pd.api.types.is_datetime64_any_dtype(dtype) or (
        pd.api.types.is_numeric_dtype(dtype) and not isinstance(dtype, pd.CategoricalDtype)
    )


def numeric(column: pd.Series) -> np.ndarray:
    """Floats, with NaN for missing (datetimes as nanoseconds)."""
    if pd.api.types.is_datetime64_any_dtype(column.dtype):
        return column.astype("int64").where(column.notna()).to_numpy(dtype=np.float64)
    return column.to_numpy(dtype=np.float64, na_value=np.nan)


def hanley_mcneil(auc: float, positives: int, negatives: int) -> float:
    """Standard error of a ROC AUC (Hanley & McNeil, Radiology 1982)."""
    q1 = auc / (2 - auc)
    q2 = 2 * auc**2 / (1 + auc)
    variance = (
        auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2)
    ) / (positives * negatives)
    return math.sqrt(max(variance, 0.0))
