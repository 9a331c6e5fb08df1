"""How a challenger's scores of a day differ from the champion's on the same slice.

Plain functions of numpy arrays: no Django here (scoring.quality.challengers gathers the
scores and stores the result on a `Comparison`). Its shape, JSON-able (None where a metric
has nothing to count, e.g. no entity scored by both under a traffic split):

    {
      "champion_rows": 100000, "challenger_rows": 100000, "shared_rows": 100000,
      "psi": 0.03,                   # challenger's scores in the champion's decile bins
      "spearman": 0.97,              # rank correlation over the entities both scored
      "top_decile_overlap": 0.91,    # share of the champion's top 10% also in the challenger's
      "top_percent_overlap": 0.85,   # the same for the top 1%
      "decile_moved_2": 0.004        # share of entities whose decile moved by two or more
    }
"""

import math

import numpy as np
import pandas as pd

from scoring.quality import metrics

TOP_DECILE, TOP_PERCENT = 0.10, 0.01


def compare(
    *,
    champion_ids: np.ndarray,
    champion_scores: np.ndarray,
    challenger_ids: np.ndarray,
    challenger_scores: np.ndarray,
) -> dict:
    """The comparison of two versions' scores of one slice, entities matched by id."""
    champion = pd.Series(champion_scores, index=champion_ids, dtype=float)
    challenger = pd.Series(challenger_scores, index=challenger_ids, dtype=float)
    both = pd.concat([champion, challenger], axis=1, join="inner", keys=["a", "b"]).dropna()
    shared = {
        "spearman": None,
        "top_decile_overlap": None,
        "top_percent_overlap": None,
        "decile_moved_2": None,
    }
    if len(both) > 1:
        a, b = both["a"].to_numpy(), both["b"].to_numpy()
        shared = {
            "spearman": finite(both["a"].rank().corr(both["b"].rank())),
            "top_decile_overlap": top_overlap(a, b, TOP_DECILE),
            "top_percent_overlap": top_overlap(a, b, TOP_PERCENT),
            "decile_moved_2": float(np.mean(np.abs(deciles(a) - deciles(b)) >= 2)),
        }
    return {
        "champion_rows": len(champion),
        "challenger_rows": len(challenger),
        "shared_rows": len(both),
        "psi": finite(metrics.psi(champion.to_numpy(), challenger.to_numpy())),
        **shared,
    }


def top_overlap(a: np.ndarray, b: np.ndarray, share: float) -> float:
    """The share of the top `share` of entities by `a` that are also in the top by `b`
    (at least one entity: the top 1% of a small slice is its best entity)."""
    count = max(1, math.floor(len(a) * share))
    top_a = np.argsort(-a, kind="stable")[:count]
    top_b = np.argsort(-b, kind="stable")[:count]
    return len(np.intersect1d(top_a, top_b)) / count


def deciles(values: np.ndarray) -> np.ndarray:
    """Each entity's decile, 0 to 9, by rank (ties keep their order)."""
    ranks = np.empty(len(values), dtype=np.int64)
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    return ranks * 10 // len(values)


def finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None
