"""A few rows handed to a model in its own input, not as a pandas frame, for the models
whose input is known exactly: a bare CatBoost or LightGBM classifier.

An online request is a row or a few. A one-row pandas frame of 50 columns costs ~0.6 ms to
build, and CatBoost ~1.5 ms more to read it column by column (LightGBM ~0.9 ms to check
it), while their trees take 0.1-0.4 ms. Built straight from the Arrow columns, the same
rows give the same scores to the last bit (tests/test_native_rows.py). Past SMALL_ROWS,
anything else, or anything unusual (text in a number's place, a missing category), the
rows go through the frame as in batch: `raw_scores` returns None.
"""

import inspect
import weakref
from typing import Any

import numpy as np
import pyarrow as pa

from scoring.packages.contract import Package, type_name

# Above this the frame is cheaper: its cost is per column, the native input's per value.
SMALL_ROWS = 128
# lightgbm_takes_arrays's answers, as long as their models live.
LIGHTGBM_ANSWERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def raw_scores(model: object, package: Package, table: pa.Table) -> Any | None:
    """What the package's method would return for these rows, or None: use the frame."""
    if table.num_rows > SMALL_ROWS or package.method != "predict_proba":
        return None
    columns = table.select(package.features).columns
    kind = type_name(model)
    if kind == "catboost.core.CatBoostClassifier":
        return catboost_proba(model, package.features, columns)
    if kind == "lightgbm.sklearn.LGBMClassifier":
        return lightgbm_proba(model, package.features, columns)
    return None


def catboost_proba(model, features: list[str], columns: list[pa.ChunkedArray]):
    """CatBoost reads a 2-D object array as a frame's values: numbers, and its categorical
    features' text."""
    if model.feature_names_ != features or model.get_text_feature_indices():
        return None
    categorical = set(model.get_cat_feature_indices())
    rows = np.empty((len(columns[0]), len(columns)), dtype=object)
    for index, column in enumerate(columns):
        kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
        if index in categorical:
            if not pa.types.is_string(kind) or column.null_count:
                return None
            rows[:, index] = column.to_pylist()
        elif is_number(column.type):
            rows[:, index] = column.to_numpy()
        else:
            return None
    return model.predict_proba(rows)


def lightgbm_proba(model, features: list[str], columns: list[pa.ChunkedArray]):
    """A binary LightGBM classifier without pandas categories, nor parameters beyond its
    constructor's but its verbosity (some change predictions): its booster on a float array, as
    LGBMClassifier.predict_proba calls it, without the wrapper's checks (0.6 ms a call)."""
    if not lightgbm_takes_arrays(model, features) or not all(
        is_number(column.type) for column in columns
    ):
        return None
    rows = np.empty((len(columns[0]), len(columns)))
    for index, column in enumerate(columns):
        rows[:, index] = column.to_numpy()
    positive = model.booster_.predict(rows)
    return np.column_stack([1.0 - positive, positive])


def lightgbm_takes_arrays(model, features: list[str]) -> bool:
    """Whether the model's booster scores as its predict_proba does; asked once a model, as
    its answer never changes and asking costs ~0.15 ms, more than the trees of a row."""
    if model not in LIGHTGBM_ANSWERS:
        constructor = inspect.signature(type(model).__init__).parameters
        LIGHTGBM_ANSWERS[model] = not (
            model.objective_ != "binary"
            or set(model.get_params()) - set(constructor) - {"verbose", "verbosity"}
            or model.booster_.pandas_categorical
            or list(model.feature_name_) != features
        )
    return LIGHTGBM_ANSWERS[model]


def is_number(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)
