"""A few online rows handed to CatBoost and LightGBM in their own input score exactly as the
frame a batch chunk becomes (scoring.sandbox.native_rows); anything else takes the frame."""

import numpy as np
import pyarrow as pa
import pytest
from lightgbm import LGBMClassifier

from scoring.packages import contract
from scoring.sandbox import native_rows
from tests.factories import packages
from tests.factories.features import FEATURES, NUMERIC, churn_labels, feature_frame


def rows(count: int, seed: int = 5) -> pa.Table:
    """Rows as the serving process hands them on: text as Arrow dictionaries."""
    return pa.Table.from_pandas(feature_frame(count, seed)[FEATURES], preserve_index=False)


def frame_scores(obj: dict, table: pa.Table) -> np.ndarray:
    """As a batch chunk is scored."""
    package = contract.parse_package(obj)
    frame = table.select(package.features).to_pandas(split_blocks=True)
    return contract.score(obj["model"], package.method, frame)


def native_scores(obj: dict, table: pa.Table) -> np.ndarray | None:
    package = contract.parse_package(obj)
    raw = native_rows.raw_scores(obj["model"], package, table)
    return None if raw is None else contract.scores_of(obj["model"], package.method, raw)


def numeric_lightgbm(**params) -> dict:
    frame = feature_frame(2000, seed=3)
    model = LGBMClassifier(n_estimators=40, num_leaves=15, n_jobs=1, verbose=-1, **params)
    return {"model": model.fit(frame[NUMERIC], churn_labels(frame)), "features": NUMERIC}


@pytest.mark.parametrize("count", [1, 7, native_rows.SMALL_ROWS])
@pytest.mark.parametrize(
    "make", [packages.catboost_package, numeric_lightgbm], ids=["catboost", "lightgbm"]
)
def test_a_few_rows_score_natively_as_the_frame_scores_them(make, count):
    obj, table = make(), rows(count)
    native = native_scores(obj, table)
    assert native is not None
    np.testing.assert_allclose(native, frame_scores(obj, table), rtol=0, atol=1e-12)


def test_more_rows_than_a_few_take_the_frame():
    obj = packages.catboost_package()
    assert native_scores(obj, rows(native_rows.SMALL_ROWS + 1)) is None


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param(packages.lightgbm_package(), id="lightgbm-on-pandas-categories"),
        pytest.param(
            numeric_lightgbm(max_bin_by_feature=None, pred_early_stop=True),
            id="lightgbm-predict-parameter",
        ),
        pytest.param(packages.sklearn_package(), id="sklearn-pipeline"),
        pytest.param(packages.function_package(), id="function"),
    ],
)
def test_models_whose_input_is_not_known_exactly_take_the_frame(obj):
    assert native_scores(obj, rows(3)) is None


def test_a_missing_category_takes_the_frame():
    obj = packages.catboost_package()
    table = rows(3)
    plan = table.column("plan").combine_chunks()
    holed = pa.DictionaryArray.from_arrays(pa.array([0, None, 1], pa.int8()), plan.dictionary)
    table = table.set_column(table.schema.get_field_index("plan"), "plan", holed)
    assert native_scores(obj, table) is None
