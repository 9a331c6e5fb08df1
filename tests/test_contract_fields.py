"""Unit tests for scoring.contract: a package's meta, schedule, name and email, its reference
scores and extra keys, score() and check_scores(), and the notebook helper."""

import json

import dill
import numpy as np
import pandas as pd
import pytest

from scoring.packages.contract import (
    CALL,
    ContractError,
    build_package,
    check_email,
    check_name,
    check_reference_scores,
    check_scores,
    parse_package,
    save_package,
    score,
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
