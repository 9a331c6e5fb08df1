"""How much each feature matters to a model, measured in the sandbox at validation.

The model's own measure where it has one that maps onto the package's features: CatBoost's
`get_feature_importance`, LightGBM's and XGBoost's total gain, scikit-learn's
`feature_importances_`, or the magnitude of `coef_` on scaled inputs (times each column's
spread on the smoke-test rows when the model sees them unscaled). Anything else — a
pipeline that encodes its inputs, a plain function — by permutation on the smoke-test rows:
how far the scores move, on average, when one column is shuffled (no labels are needed).

The result is each feature's share of the whole, so models of any kind compare.
"""

from collections.abc import Callable
from typing import Any

import numpy as np

SEED = 0
MAX_PERMUTED = 500  # features shuffled one by one; beyond this a model keeps its own measure only


def measure(
    model: Any, features: list[str], frame: Any | None, score: Callable[[Any], np.ndarray]
) -> dict[str, Any] | None:
    """{"method": how it was measured, "features": [{"name", "share"}], most important
    first (a list: the database's JSON keeps no key order); None when the model has no
    measure of its own and there are no rows to shuffle."""
    own = own_importance(model, features, frame)
    if own is not None:
        method, values = own
    elif frame is not None and len(features) <= MAX_PERMUTED:
        method, values = "permutation", permutation(features, frame, score)
    else:
        return None
    values = np.nan_to_num(np.abs(np.asarray(values, dtype=np.float64)))
    total = values.sum()
    shares = values / total if total > 0 else values
    ranked = sorted(zip(features, shares, strict=True), key=lambda item: -item[1])
    features = [{"name": name, "share": round(float(share), 6)} for name, share in ranked]
    return {"method": method, "features": features}


def own_importance(model: Any, features: list[str], frame: Any | None):
    """(method, one value per feature) from the model itself, or None."""
    module = type(model).__module__.split(".")[0]
    if module == "catboost" and hasattr(model, "get_feature_importance"):
        return "catboost", aligned(model.feature_names_, model.get_feature_importance(), features)
    if module == "lightgbm":
        booster = getattr(model, "booster_", model)
        values = booster.feature_importance(importance_type="gain")
        return "gain", aligned(booster.feature_name(), values, features)
    if module == "xgboost":
        booster = model.get_booster() if hasattr(model, "get_booster") else model
        gains = booster.get_score(importance_type="total_gain")
        names = booster.feature_names or [f"f{i}" for i in range(len(features))]
        return "gain", aligned(names, [gains.get(name, 0.0) for name in names], features)
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    values = getattr(final, "feature_importances_", None)
    if values is not None and np.ndim(values) == 1 and len(values) == len(features):
        return "feature_importances_", values
    coef = getattr(final, "coef_", None)
    if coef is not None and np.shape(coef)[-1] == len(features):
        magnitude = np.abs(np.atleast_2d(coef)).mean(axis=0)
        if final is model and frame is not None:  # unscaled inputs: weigh by each column's spread
            magnitude = magnitude * spread(frame[features])
        return "coef_", magnitude
    return None


def aligned(names: list[str], values, features: list[str]) -> np.ndarray:
    """The model's values in the package's feature order: by name where the model kept the
    names, else by position (a model fitted on an array)."""
    by_name = dict(zip(names, values, strict=True))
    if set(features) <= set(by_name):
        return np.array([by_name[name] for name in features], dtype=np.float64)
    return np.asarray(values, dtype=np.float64)[: len(features)]


def spread(frame) -> np.ndarray:
    return np.array(
        [np.nanstd(frame[c].to_numpy(dtype=np.float64, na_value=np.nan)) for c in frame.columns]
    )


def permutation(features: list[str], frame, score: Callable[[Any], np.ndarray]) -> np.ndarray:
    rng = np.random.default_rng(SEED)
    base = score(frame)
    changes = []
    for name in features:
        shuffled = frame.copy()
        # take keeps the column's dtype (categories stay categories)
        shuffled[name] = frame[name].take(rng.permutation(len(frame))).set_axis(frame.index)
        changes.append(np.mean(np.abs(score(shuffled) - base)))
    return np.array(changes)
