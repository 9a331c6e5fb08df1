"""Unit tests for scoring.contract: the package format 1, its checks and the notebook helper."""

import json

import dill
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression

from scoring.packages.contract import (
    CALL,
    ContractError,
    build_package,
    check_email,
    check_name,
    check_params,
    check_reference_scores,
    check_scores,
    parse_package,
    resolve_method,
    save_package,
    score,
)

FRAME = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0], "b": [1.0, 0.0, 1.0, 0.0]})
FEATURES = ["a", "b"]
CLASSIFIER = LogisticRegression().fit(FRAME, ["no", "no", "yes", "yes"])
NUMERIC_CLASSIFIER = LogisticRegression().fit(FRAME, [0, 0, 1, 1])
REGRESSOR = LinearRegression().fit(FRAME, [0.0, 10.0, 20.0, 30.0])


class OnlyPredict:
    def predict(self, frame):
        return np.full(len(frame), 0.5)


class NothingToCall:
    pass


class ColumnPredict:
    def predict(self, frame):
        return np.arange(len(frame), dtype=float).reshape(-1, 1)


class WidePredict:
    def predict(self, frame):
        return np.zeros((len(frame), 2))


class TextPredict:
    def predict(self, frame):
        return np.array(["high"] * len(frame))


class FlatProba:
    def predict_proba(self, frame):
        return np.zeros(len(frame))


def double_a(frame):
    return frame["a"] * 2


def package(**keys):
    return {"model": CLASSIFIER, "features": FEATURES, **keys}


def refusal(check, *args, **keys) -> str:
    with pytest.raises(ContractError) as caught:
        check(*args, **keys)
    return str(caught.value)


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


# --- meta, schedule, name, email ----------------------------------------------


@pytest.mark.parametrize("meta, shown", [("author: ana", "str"), ([("a", 1)], "list"), (3, "int")])
def test_it_refuses_meta_that_is_not_a_dict(meta, shown):
    assert refusal(parse_package, package(meta=meta)) == f"'meta' must be a dict, got {shown}"


@pytest.mark.parametrize("meta", [[], "", 0])
def test_it_refuses_empty_meta_that_is_not_a_dict(meta):
    with pytest.raises(ContractError):
        parse_package(package(meta=meta))


def test_it_makes_meta_json_able():
    class Opaque:
        def __repr__(self):
            return "<opaque>"

    meta = {
        "gini": np.float64(0.61),
        "rows": np.int64(5),
        "ok": np.bool_(True),
        "nan": float("nan"),
        "inf": np.float64("inf"),
        "who": Opaque(),
        "window": ("2024-01", "2024-06"),
        7: {"nested": [np.int32(1), None]},
    }

    shown = parse_package(package(meta=meta)).meta

    assert shown == {
        "gini": 0.61,
        "rows": 5,
        "ok": True,
        "nan": "nan",
        "inf": "inf",
        "who": "<opaque>",
        "window": ["2024-01", "2024-06"],
        "7": {"nested": [1, None]},
    }
    assert type(shown["gini"]) is float and type(shown["rows"]) is int
    json.dumps(shown, allow_nan=False)


@pytest.mark.parametrize(
    "schedule, kept",
    [
        ("daily", "daily"),
        (" Weekly ", "weekly"),
        ("0  6 * * 1-5", "0 6 * * 1-5"),
    ],
)
def test_it_keeps_a_schedule_normalized(schedule, kept):
    assert parse_package(package(schedule=schedule)).schedule == kept


@pytest.mark.parametrize(
    "schedule, message",
    [
        (
            "61 * * * *",
            "'schedule': schedule '61 * * * *' is not a valid cron expression: Bad minute",
        ),
        (
            "hourly",
            "'schedule': schedule 'hourly' is neither a preset (daily, weekly, monthly) "
            "nor a 5-field cron expression (minute hour day month weekday)",
        ),
        (
            "",
            "'schedule': schedule must be 'daily', 'weekly', 'monthly' or a 5-field cron expression",
        ),
    ],
)
def test_it_refuses_a_bad_schedule_under_its_key(schedule, message):
    assert refusal(parse_package, package(schedule=schedule)) == message


@pytest.mark.parametrize("name", ["churn", "  churn v2  ", "Модель оттока", "a.b", "x" * 100])
def test_it_accepts_names(name):
    assert check_name(name) == name.strip()


@pytest.mark.parametrize(
    "name, message",
    [
        ("", "name must not be empty"),
        ("   ", "name must not be empty"),
        ("x" * 101, "name must be at most 100 characters"),
        ("a/b", "name 'a/b' must not contain '/', '\\' or '..'"),
        ("a\\b", "name 'a\\\\b' must not contain '/', '\\' or '..'"),
        ("..", "name '..' must not contain '/', '\\' or '..'"),
        ("v1..v2", "name 'v1..v2' must not contain '/', '\\' or '..'"),
        ("a\x00b", "name must not contain control characters"),
        ("a\nb", "name must not contain control characters"),
        ("a\u200bb", "name must not contain control characters"),
        ("- _ -", "name '- _ -' must contain at least one letter or digit"),
        (5, "name must be text, got int"),
    ],
)
def test_it_refuses_bad_names(name, message):
    assert refusal(check_name, name) == message


def test_it_checks_the_name_inside_a_package():
    assert parse_package(package(name=" churn ")).name == "churn"
    assert refusal(parse_package, package(name="../x")) == (
        "name '../x' must not contain '/', '\\' or '..'"
    )


@pytest.mark.parametrize(
    "email", ["ann@bank.example", "risk.team+scores@mail.bank.co.uk", "demo@localhost"]
)
def test_it_accepts_a_single_address(email):
    assert check_email(f" {email} ") == email


@pytest.mark.parametrize(
    "email",
    [
        "annbank.example",
        "ann@bank.example\nBcc: eve@evil.example",
        "ann@bank.example\r\nBcc: eve@evil.example",
        "ann@bank.example, eve@evil.example",
        "Ann <ann@bank.example>",
        "ann@",
        "ann@-bank",
    ],
)
def test_it_refuses_an_address_that_is_not_single_and_plain(email):
    assert refusal(check_email, email) == f"email {email!r} is not a single valid address"


def test_it_refuses_an_address_that_is_too_long():
    email = "a" * 250 + "@b.co"

    assert refusal(check_email, email) == f"email {email[:80]!r} is not a single valid address"


def test_it_refuses_an_address_that_is_not_text():
    assert refusal(check_email, ["ann@bank.example"]) == "email must be text, got list"


def test_it_checks_the_email_inside_a_package():
    assert parse_package(package(email="ann@bank.example")).email == "ann@bank.example"
    assert refusal(parse_package, package(email="a@b.example\nBcc: c@d.example")).startswith(
        "email 'a@b.example\\nBcc: c@d.example' is not"
    )


# --- reference scores and extra keys ------------------------------------------


@pytest.mark.parametrize("scores", [[0.1, 0.2, 0.9], np.array([0.1, 0.2, 0.9]), (0, 1, 1)])
def test_it_counts_reference_scores(scores):
    assert parse_package(package(reference_scores=scores)).reference_scores_count == 3


@pytest.mark.parametrize("scores", [[], np.zeros((2, 2)), [[0.1], [0.2]], 0.5])
def test_it_refuses_reference_scores_that_are_not_a_non_empty_list(scores):
    assert refusal(check_reference_scores, scores) == (
        "'reference_scores' must be a non-empty one-dimensional list of numbers"
    )


@pytest.mark.parametrize("scores", [["high", "low"], [0.1, None, {}], ["1", "2"]])
def test_it_refuses_reference_scores_that_are_not_numbers(scores):
    assert refusal(check_reference_scores, scores) == (
        "'reference_scores' must be a non-empty one-dimensional list of numbers"
    )


def test_it_refuses_reference_scores_with_nan():
    assert refusal(check_reference_scores, [0.1, float("nan"), float("inf")]) == (
        "'reference_scores' has 2 NaN or infinite values"
    )


def test_it_keeps_extra_keys_as_short_reprs():
    extra = parse_package(package(owner_team="risk", notes="x" * 500, blob=b"\x00")).extra_keys

    assert extra["owner_team"] == "'risk'"
    assert extra["blob"] == "b'\\x00'"
    assert len(extra["notes"]) == 200 and extra["notes"].endswith("…")


# --- score() and check_scores() -----------------------------------------------


def test_it_scores_the_last_class_by_default():
    scores = score(CLASSIFIER, "predict_proba", FRAME)

    assert scores.dtype == np.float64
    np.testing.assert_allclose(scores, CLASSIFIER.predict_proba(FRAME)[:, 1])


def test_it_scores_the_positive_class_when_given():
    scores = score(CLASSIFIER, "predict_proba", FRAME, positive_class="no")

    np.testing.assert_allclose(scores, CLASSIFIER.predict_proba(FRAME)[:, 0])


def test_it_scores_with_predict():
    np.testing.assert_allclose(score(REGRESSOR, "predict", FRAME), REGRESSOR.predict(FRAME))


def test_it_scores_with_a_plain_function():
    assert score(double_a, CALL, FRAME).tolist() == [0.0, 2.0, 4.0, 6.0]


def test_it_flattens_a_single_column_output():
    scores = score(ColumnPredict(), "predict", FRAME)

    assert scores.shape == (4,) and scores.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_it_refuses_output_that_is_not_numbers():
    assert refusal(score, TextPredict(), "predict", FRAME) == (
        "predict returned values that are not numbers (<U4)"
    )


def test_it_refuses_predict_output_with_several_columns():
    assert refusal(score, WidePredict(), "predict", FRAME) == (
        "predict returned shape (4, 2); expected one value per row"
    )


def test_it_refuses_predict_proba_output_that_is_not_a_table():
    assert refusal(score, FlatProba(), "predict_proba", FRAME) == (
        "predict_proba returned shape (4,); expected (rows, classes)"
    )


def test_it_accepts_good_scores():
    check_scores(np.array([0.0, 0.5, 1.0]), 3, "predict_proba")


def test_it_refuses_scores_of_the_wrong_length():
    assert refusal(check_scores, np.zeros(3), 4, "predict") == (
        "the model returned 3 scores for 4 rows"
    )


def test_it_refuses_and_counts_nan_and_infinite_scores():
    scores = np.array([0.1, np.nan, np.inf, -np.inf, 0.2])

    assert refusal(check_scores, scores, 5, "predict") == (
        "the model returned 3 NaN or infinite scores of 5"
    )


def test_it_refuses_probabilities_outside_0_1():
    assert refusal(check_scores, np.array([0.1, 1.5, -0.1]), 3, "predict_proba") == (
        "predict_proba returned values outside [0, 1] (min -0.1, max 1.5)"
    )


def test_it_lets_a_regressor_score_outside_0_1():
    scores = score(REGRESSOR, "predict", FRAME)

    assert scores.max() > 1
    check_scores(scores, len(FRAME), "predict")


# --- the notebook helper --------------------------------------------------------


def test_it_builds_a_package_of_format_1():
    built = build_package(CLASSIFIER, pd.Index(FEATURES), schedule="daily")

    assert built == {"model": CLASSIFIER, "features": FEATURES, "format": 1, "schedule": "daily"}


def test_it_saves_a_package_that_loads_back_and_scores(tmp_path):
    path = tmp_path / "churn.dill"

    saved = save_package(str(path), CLASSIFIER, FEATURES, meta={"author": "ana"})

    with open(path, "rb") as file:
        loaded = dill.load(file)
    assert saved["format"] == loaded["format"] == 1
    assert loaded["features"] == FEATURES and loaded["meta"] == {"author": "ana"}
    parsed = parse_package(loaded)
    np.testing.assert_allclose(
        score(loaded["model"], parsed.method, FRAME), score(CLASSIFIER, "predict_proba", FRAME)
    )


def test_it_saves_a_plain_function_by_value(tmp_path):
    path = tmp_path / "fn.dill"

    save_package(str(path), lambda frame: frame["a"] / 10, FEATURES)

    with open(path, "rb") as file:
        loaded = dill.load(file)
    assert score(loaded["model"], CALL, FRAME).tolist() == [0.0, 0.1, 0.2, 0.3]


def test_it_refuses_to_save_a_bad_package_before_writing(tmp_path):
    path = tmp_path / "bad.dill"

    message = refusal(save_package, str(path), CLASSIFIER, ["a", "a"])

    assert message == "'features' has duplicate column names: a"
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_it_refuses_to_build_a_package_with_a_bad_param():
    assert refusal(build_package, CLASSIFIER, FEATURES, params={"max_attempts": 0}) == (
        "params.max_attempts must be a whole number from 1 to 20, got 0"
    )
