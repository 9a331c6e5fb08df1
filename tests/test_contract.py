"""Unit tests for scoring.contract: the package format 1 as a whole, its features, format and
params, and the model and its method."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from scoring.packages.contract import (
    CALL,
    ContractError,
    check_params,
    parse_package,
    resolve_method,
)
from tests.factories.contract import (
    CLASSIFIER,
    FEATURES,
    FRAME,
    REGRESSOR,
    double_a,
    package,
    refusal,
)

NUMERIC_CLASSIFIER = LogisticRegression().fit(FRAME, [0, 0, 1, 1])


class OnlyPredict:
    def predict(self, frame):
        return np.full(len(frame), 0.5)


class NothingToCall:
    pass


# --- the package as a whole -------------------------------------------------


def test_it_accepts_a_minimal_package_and_leaves_the_defaults_to_the_site():
    parsed = parse_package(package())

    assert parsed.features == FEATURES
    assert parsed.method == "predict_proba"
    assert parsed.model_type == "sklearn.linear_model._logistic.LogisticRegression"
    assert parsed.classes == ["no", "yes"]
    assert parsed.format == 1
    assert parsed.warnings == []
    assert parsed.name is parsed.email is parsed.schedule is None
    assert parsed.reference_scores_count is None
    # Only the method it resolved: every other parameter follows the site's settings.
    assert parsed.params == {"method": "predict_proba"}


def test_its_result_is_plain_json():
    parsed = parse_package(package(meta={"author": "ana"}, name="churn", schedule="daily"))

    assert json.loads(json.dumps(parsed.to_json()))["meta"] == {"author": "ana"}


@pytest.mark.parametrize(
    "obj, shown",
    [
        ([1, 2], "builtins.list"),
        ("model", "builtins.str"),
        (CLASSIFIER, "sklearn.linear_model._logistic.LogisticRegression"),
    ],
)
def test_it_refuses_a_package_that_is_not_a_dict(obj, shown):
    assert refusal(parse_package, obj) == (
        f"the package must be a dict with 'model' and 'features', got a {shown}"
    )


def test_it_refuses_keys_that_are_not_text():
    assert refusal(parse_package, {**package(), 1: "x"}) == "package keys must be text, got 1"


def test_it_refuses_a_package_without_a_model():
    assert refusal(parse_package, {"features": FEATURES}) == (
        "'model' is missing: put the fitted model, pipeline or function under 'model'"
    )


def test_it_refuses_a_package_without_features():
    assert refusal(parse_package, {"model": CLASSIFIER}) == (
        "'features' is missing: list the column names the model consumes"
    )


# --- features -----------------------------------------------------------------

NOT_A_LIST = "'features' must be a non-empty list of column names"


@pytest.mark.parametrize(
    "features, shown",
    [
        ("a,b", "str"),
        (b"ab", "bytes"),
        ({"a": 1}, "dict"),
        (None, "NoneType"),
        (5, "int"),
    ],
)
def test_it_refuses_features_that_are_not_a_list(features, shown):
    assert refusal(parse_package, package(features=features)) == f"{NOT_A_LIST}, got {shown}"


def test_it_refuses_empty_features():
    assert refusal(parse_package, package(features=[])) == NOT_A_LIST


@pytest.mark.parametrize(
    "features, shown",
    [
        (["a", 1, None], "1, None"),
        (["a", ""], "''"),
        (["a", "  "], "'  '"),
    ],
)
def test_it_refuses_features_that_are_not_names(features, shown):
    assert refusal(parse_package, package(features=features)) == (
        f"{NOT_A_LIST}; these are not: {shown}"
    )


def test_it_refuses_duplicate_features():
    assert refusal(parse_package, package(features=["b", "a", "b", "a", "c"])) == (
        "'features' has duplicate column names: a, b"
    )


def test_it_refuses_too_many_features():
    features = [f"f{i}" for i in range(10_001)]

    assert refusal(parse_package, package(features=features)) == (
        "'features' has 10001 columns; at most 10000"
    )


def test_it_accepts_features_as_any_sequence_of_names():
    assert parse_package(package(features=pd.Index(FEATURES))).features == FEATURES
    assert parse_package(package(features=("a", "b"))).features == FEATURES


# --- format -------------------------------------------------------------------


@pytest.mark.parametrize("version, shown", [(True, "True"), ("1", "'1'"), (0, "0"), (1.0, "1.0")])
def test_it_refuses_a_format_that_is_not_a_whole_number_from_1(version, shown):
    assert refusal(parse_package, package(format=version)) == (
        f"'format' must be a whole number from 1, got {shown}"
    )


def test_it_accepts_a_newer_format_with_a_warning():
    parsed = parse_package(package(format=2, future_key="x"))

    assert parsed.format == 2
    assert parsed.warnings == [
        "format 2 is newer than this portal's 1: keys it does not know are kept and ignored"
    ]
    assert parsed.extra_keys == {"future_key": "'x'"}


# --- params -------------------------------------------------------------------


def test_it_writes_no_default_into_the_params():
    assert check_params(None) == ({}, [])
    assert check_params({"psi_warn": 0.2}) == ({"psi_warn": 0.2}, [])


def test_it_refuses_params_that_are_not_a_dict():
    assert refusal(parse_package, package(params=[1])) == "'params' must be a dict, got list"


def test_it_refuses_an_unknown_method():
    assert refusal(check_params, {"method": "score"}) == (
        "params.method must be one of predict_proba, predict, decision_function, got 'score'"
    )


@pytest.mark.parametrize(
    "key, value, low, high",
    [
        ("chunk_rows", 999, 1000, 10_000_000),
        ("chunk_rows", 10_000_001, 1000, 10_000_000),
        ("chunk_rows", 5000.0, 1000, 10_000_000),
        ("chunk_rows", "5000", 1000, 10_000_000),
        ("chunk_rows", True, 1000, 10_000_000),
        ("max_attempts", 0, 1, 20),
        ("max_attempts", 21, 1, 20),
        ("max_attempts", 2.5, 1, 20),
        ("max_attempts", True, 1, 20),
    ],
)
def test_it_refuses_whole_number_params_out_of_range_or_of_the_wrong_type(key, value, low, high):
    assert refusal(check_params, {key: value}) == (
        f"params.{key} must be a whole number from {low} to {high}, got {value!r}"
    )


@pytest.mark.parametrize("value", [-1, 10_081, float("nan"), float("inf"), "30", True, None])
def test_it_refuses_a_retry_delay_out_of_range_or_of_the_wrong_type(value):
    assert refusal(check_params, {"retry_delay_minutes": value}) == (
        f"params.retry_delay_minutes must be a number from 0 to 10080, got {value!r}"
    )


@pytest.mark.parametrize(
    "key, value",
    [
        ("chunk_rows", 1000),
        ("chunk_rows", 10_000_000),
        ("max_attempts", 1),
        ("max_attempts", 20),
    ],
)
def test_it_accepts_whole_number_params_at_their_bounds(key, value):
    assert check_params({key: value})[0][key] == value


def test_it_accepts_numpy_integers_and_stores_plain_ints():
    params, _ = check_params({"chunk_rows": np.int64(5000), "max_attempts": np.int32(2)})

    assert params["chunk_rows"] == 5000 and type(params["chunk_rows"]) is int
    assert type(params["max_attempts"]) is int


@pytest.mark.parametrize("value", [0, 2.5, 10_080])
def test_it_accepts_a_retry_delay_in_range_as_a_float(value):
    delay = check_params({"retry_delay_minutes": value})[0]["retry_delay_minutes"]

    assert delay == value and type(delay) is float


def test_it_refuses_psi_warn_above_psi_alert():
    assert refusal(check_params, {"psi_warn": 0.3, "psi_alert": 0.25}) == (
        "params.psi_warn (0.3) must not exceed params.psi_alert"
    )


def test_it_refuses_adversarial_warn_above_adversarial_alert():
    assert refusal(check_params, {"adversarial_warn": 0.7, "adversarial_alert": 0.65}) == (
        "params.adversarial_warn (0.7) must not exceed params.adversarial_alert"
    )


@pytest.mark.parametrize(
    "key, value",
    [
        ("psi_warn", -0.1),
        ("psi_alert", 11),
        ("adversarial_alert", float("nan")),
        ("adversarial_warn", "0.6"),
    ],
)
def test_it_refuses_thresholds_out_of_range(key, value):
    assert refusal(check_params, {key: value}) == (
        f"params.{key} must be a number from 0 to 10, got {value!r}"
    )


def test_it_accepts_thresholds_that_are_equal():
    params, _ = check_params({"psi_warn": 0.2, "psi_alert": 0.2})

    assert params["psi_warn"] == params["psi_alert"] == 0.2


def test_it_keeps_unknown_params_with_a_warning():
    parsed = parse_package(package(params={"zeta": 1, "alpha": "x"}))

    assert parsed.params["zeta"] == 1 and parsed.params["alpha"] == "x"
    assert parsed.warnings == [
        "params.alpha is not a known parameter and is ignored",
        "params.zeta is not a known parameter and is ignored",
    ]


# --- the model and its method -----------------------------------------------


def test_it_uses_an_explicit_method_the_model_has():
    assert resolve_method(CLASSIFIER, "decision_function") == "decision_function"
    parsed = parse_package(package(params={"method": "predict"}))
    assert parsed.method == parsed.params["method"] == "predict"


def test_it_refuses_an_explicit_method_the_model_lacks():
    bad = package(model=OnlyPredict(), params={"method": "predict_proba"})

    assert refusal(parse_package, bad) == (
        "params.method is 'predict_proba' but the model has no predict_proba"
    )


def test_it_prefers_predict_proba_over_predict():
    assert resolve_method(CLASSIFIER, None) == "predict_proba"


def test_it_uses_predict_when_there_is_no_predict_proba():
    assert resolve_method(OnlyPredict(), None) == "predict"
    assert resolve_method(REGRESSOR, None) == "predict"


def test_it_calls_a_plain_function():
    assert resolve_method(double_a, None) == CALL == "__call__"
    assert parse_package(package(model=double_a)).method == "__call__"


def test_it_refuses_a_class_instead_of_a_callable_model():
    assert refusal(resolve_method, NothingToCall, None) == (
        "model is the class tests.test_contract.NothingToCall, not a fitted model: "
        "put the fitted instance under 'model'"
    )


def test_it_refuses_a_model_class_that_has_predict_proba():
    with pytest.raises(ContractError):
        parse_package(package(model=LogisticRegression))


def test_it_refuses_a_model_with_nothing_to_call():
    assert refusal(parse_package, package(model=object())) == (
        "model has no predict_proba or predict and is not a function (it is a builtins.object)"
    )


def test_it_accepts_a_positive_class_among_the_classes():
    assert parse_package(package(params={"positive_class": "no"})).params["positive_class"] == "no"


def test_it_refuses_a_positive_class_not_among_the_classes():
    assert refusal(parse_package, package(params={"positive_class": "maybe"})) == (
        "params.positive_class 'maybe' is not one of the model's classes ['no', 'yes']"
    )


def test_it_reports_numpy_classes_as_plain_values():
    assert parse_package(package(model=NUMERIC_CLASSIFIER)).classes == [0, 1]
