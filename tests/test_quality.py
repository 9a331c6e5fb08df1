"""scoring/quality/metrics.py: PSI worked by hand, adversarial validation, statuses, compare()."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from scoring.quality import metrics

THRESHOLDS = {
    "psi_warn": 0.1,
    "psi_alert": 0.25,
    "adversarial_warn": 0.6,
    "adversarial_alert": 0.65,
}


def term(actual: float, expected: float) -> float:
    """One bin of PSI: (a - e) * ln(a / e)."""
    return (actual - expected) * math.log(actual / expected)


def sample(rng: np.random.Generator, rows: int, shift: float = 0.0) -> pd.DataFrame:
    """Feature rows with a score: 6 numeric columns (x0, x1 move with `shift`), a category."""
    frame = pd.DataFrame(rng.normal(size=(rows, 6)), columns=[f"x{i}" for i in range(6)])
    frame[["x0", "x1"]] += [shift, shift / 2]
    frame["city"] = pd.Categorical(rng.choice(["lyon", "nice", "oslo"], rows))
    frame["score"] = 1 / (1 + np.exp(-(frame["x0"] + frame["x2"])))
    return frame


# --- psi -------------------------------------------------------------------------

# Baseline 1..8 with 4 bins: quantiles at positions 0, 1.75, 3.5, 5.25, 7 of the sorted
# values give edges 1, 2.75, 4.5, 6.25, 8; the inner ones cut (-inf, 2.75], (2.75, 4.5],
# (4.5, 6.25], (6.25, inf), two values each: baseline shares .25 .25 .25 .25.
BASELINE = np.arange(1, 9, dtype=float)


def test_it_is_zero_for_identical_values():
    assert metrics.psi(BASELINE, BASELINE.copy(), bins=4) == 0.0


def test_it_matches_a_shift_worked_by_hand():
    # 1 | 3 4 | 5 6 | 7 8 9 10 11: 9, 10, 11 lie past the baseline's maximum and count in
    # the open top bin. Shares .1 .2 .2 .5 against .25 each:
    # (.1-.25)ln(.1/.25) + 2 (.2-.25)ln(.2/.25) + (.5-.25)ln(.5/.25) = 0.333045
    current = np.array([1, 3, 4, 5, 6, 7, 8, 9, 10, 11], dtype=float)
    expected = term(0.1, 0.25) + 2 * term(0.2, 0.25) + term(0.5, 0.25)
    assert metrics.psi(BASELINE, current, bins=4) == pytest.approx(expected)
    assert expected == pytest.approx(0.333045, abs=1e-6)


def test_it_gives_empty_bins_epsilon_share():
    # 1 2 | - | - | 7 8 -> shares .5 0 0 .5; the empty bins count as 1e-4:
    # 2 (.5-.25)ln(.5/.25) + 2 (1e-4-.25)ln(1e-4/.25) = 4.257031
    current = np.array([1, 2, 7, 8], dtype=float)
    expected = 2 * term(0.5, 0.25) + 2 * term(1e-4, 0.25)
    value = metrics.psi(BASELINE, current, bins=4)
    assert math.isfinite(value)
    assert value == pytest.approx(expected)
    assert expected == pytest.approx(4.257031, abs=1e-6)


def test_it_merges_equal_edges_when_the_baseline_has_ties():
    # Baseline 0 0 0 0 0 1 2 3 4 5 with 5 bins: quantiles at positions 1.8, 3.6, 5.4, 7.2
    # give inner edges 0, 0, 1.4, 3.2, merged to 0, 1.4, 3.2, so the zeros keep a bin of
    # their own: (-inf, 0], (0, 1.4], (1.4, 3.2], (3.2, inf) with baseline shares
    # .5 .1 .2 .2. Current 0 0 0 1 1 1 2 3 4 5 -> .3 .3 .2 .2:
    # (.3-.5)ln(.3/.5) + (.3-.1)ln(.3/.1) + 0 + 0 = 0.321888
    baseline = np.array([0, 0, 0, 0, 0, 1, 2, 3, 4, 5], dtype=float)
    current = np.array([0, 0, 0, 1, 1, 1, 2, 3, 4, 5], dtype=float)
    expected = term(0.3, 0.5) + term(0.3, 0.1)
    assert metrics.psi(baseline, current, bins=5) == pytest.approx(expected)
    assert expected == pytest.approx(0.321888, abs=1e-6)


def test_it_ignores_non_finite_values():
    current = np.array([1, 3, 4, 5, 6, 7, 8, 9, 10, 11, np.nan, np.inf, -np.inf])
    baseline = np.append(BASELINE, np.nan)
    assert metrics.psi(baseline, current, bins=4) == pytest.approx(0.333045, abs=1e-6)


def test_it_counts_missing_values_as_a_bin_when_asked():
    # Current 1 2 3 4 5 6 NaN NaN: finite bins .25 .25 .25 0, missing .25 against 0:
    # (1e-4-.25)ln(1e-4/.25) + (.25-1e-4)ln(.25/1e-4)
    current = np.array([1, 2, 3, 4, 5, 6, np.nan, np.nan])
    expected = term(1e-4, 0.25) + term(0.25, 1e-4)
    assert metrics.psi(BASELINE, current, bins=4, missing=True) == pytest.approx(expected)


def test_it_is_nan_without_finite_values():
    assert math.isnan(metrics.psi(np.array([np.nan]), BASELINE))
    assert math.isnan(metrics.psi(BASELINE, np.array([])))


# --- categorical_psi and feature_psi -------------------------------------------------


def test_categorical_psi_matches_a_hand_value():
    # Baseline a a b b: a .5, b .5, c 0 -> 1e-4, missing 0 -> 1e-4.
    # Current a b b c None: a .2, b .4, c .2, missing .2:
    # (.2-.5)ln(.2/.5) + (.4-.5)ln(.4/.5) + 2 (.2-1e-4)ln(.2/1e-4)
    expected = term(0.2, 0.5) + term(0.4, 0.5) + 2 * term(0.2, 1e-4)
    value = metrics.categorical_psi(["a", "a", "b", "b"], ["a", "b", "b", "c", None])
    assert value == pytest.approx(expected)


def test_categorical_psi_is_zero_for_the_same_shares():
    baseline = pd.Categorical(["x", "y", None, "x"])
    assert metrics.categorical_psi(baseline, ["y", "x", "x", np.nan]) == pytest.approx(0.0)


def test_feature_psi_ranks_the_shifted_column_first():
    rng = np.random.default_rng(0)
    baseline = sample(rng, 3000).drop(columns="score")
    current = sample(rng, 3000, shift=1.0).drop(columns="score")
    current["only_here"] = 1.0
    drift = metrics.feature_psi(baseline, current, top=3)
    assert [item["name"] for item in drift[:2]] == ["x0", "x1"]
    assert len(drift) == 3
    assert drift[0]["psi"] > 0.25
    assert all(isinstance(item["psi"], float) for item in drift)


def test_feature_psi_of_models_sharing_a_slice_is_computed_once_per_column():
    rng = np.random.default_rng(0)
    baseline = sample(rng, 3000).drop(columns="score")
    current = sample(rng, 3000, shift=1.0).drop(columns="score")
    known = {}
    small = metrics.feature_psi(baseline[["x1", "x2"]], current[["x1", "x2"]], known=known)
    assert set(known) == {"x1", "x2"}
    assert metrics.feature_psi(baseline, current, known=known) == metrics.feature_psi(
        baseline, current
    )
    assert set(known) == {"x0", "x1", "x2", "x3", "x4", "x5", "city"}
    assert small == metrics.feature_psi(baseline[["x1", "x2"]], current[["x1", "x2"]])


def test_feature_psi_measures_category_columns():
    baseline = pd.DataFrame({"city": pd.Categorical(["lyon"] * 50 + ["nice"] * 50)})
    current = pd.DataFrame({"city": ["lyon"] * 90 + ["nice"] * 10})
    expected = term(0.9, 0.5) + term(0.1, 0.5)
    assert metrics.feature_psi(baseline, current) == [
        {"name": "city", "psi": pytest.approx(expected)}
    ]


# --- adversarial_auc -------------------------------------------------------------------


def test_adversarial_auc_is_near_half_for_one_distribution():
    rng = np.random.default_rng(1)
    auc, stderr = metrics.adversarial_auc(sample(rng, 6000), sample(rng, 6000))
    assert 0.004 < stderr < 0.008  # Hanley-McNeil at 5,000 + 5,000 rows: 0.0058
    assert abs(auc - 0.5) < 3 * stderr


def test_adversarial_auc_is_high_for_a_shifted_distribution():
    rng = np.random.default_rng(2)
    auc, stderr = metrics.adversarial_auc(sample(rng, 6000), sample(rng, 6000, shift=2.0))
    assert auc > 0.9
    assert 0 < stderr < 0.01


def test_adversarial_auc_sees_drift_in_a_category_column():
    rng = np.random.default_rng(3)
    baseline, current = sample(rng, 2000), sample(rng, 2000)
    current["city"] = pd.Categorical(rng.choice(["lyon", "rome"], 2000))  # object on one side
    current["city"] = current["city"].astype(object)
    auc, _ = metrics.adversarial_auc(baseline, current)
    assert auc > 0.9


def test_adversarial_auc_takes_missing_and_infinite_values():
    rng = np.random.default_rng(4)
    baseline, current = sample(rng, 1000), sample(rng, 1000)
    current.loc[::3, "x3"] = np.nan
    current.loc[1::3, "x4"] = np.inf
    current.loc[::2, "city"] = None
    auc, stderr = metrics.adversarial_auc(baseline, current)
    assert auc > 0.9
    assert math.isfinite(stderr)


def test_adversarial_auc_is_nan_for_small_samples():
    rng = np.random.default_rng(5)
    auc, stderr = metrics.adversarial_auc(sample(rng, 1000), sample(rng, 40))
    assert math.isnan(auc) and math.isnan(stderr)


def test_adversarial_auc_is_repeatable():
    rng = np.random.default_rng(6)
    baseline, current = sample(rng, 800), sample(rng, 800, shift=0.5)
    assert metrics.adversarial_auc(baseline, current) == metrics.adversarial_auc(baseline, current)


# --- compare ---------------------------------------------------------------------------


def compare(current: pd.DataFrame, baseline: pd.DataFrame | None, **kwargs) -> dict:
    descriptor = kwargs.pop("descriptor", None)
    if baseline is not None and descriptor is None:
        descriptor = {"kind": "run", "run_id": 12, "date": "2026-11-22", "rows": len(baseline)}
    return metrics.compare(
        current_scores=kwargs.pop("current_scores", current["score"].to_numpy()),
        baseline_scores=None if baseline is None else baseline["score"].to_numpy(),
        current_sample=current,
        baseline_sample=baseline,
        thresholds=THRESHOLDS,
        baseline=descriptor,
    )


def test_compare_without_baseline_rates_the_remaining_checks():
    result = compare(sample(np.random.default_rng(7), 2000), None)
    assert result["psi"] is None and result["psi_status"] is None
    assert result["adversarial_auc"] is None and result["adversarial_status"] is None
    assert result["adversarial_rows"] is None
    assert result["features"] == []
    assert result["baseline"] is None and result["baseline_rows"] is None
    assert result["rows_status"] is None
    assert result["histogram"]["baseline"] is None
    assert result["status"] == "ok"


def test_compare_rates_the_same_distribution_ok():
    rng = np.random.default_rng(8)
    result = compare(sample(rng, 6000), sample(rng, 5900))
    assert result["status"] == "ok"
    assert result["psi_status"] == "ok" and result["psi"] < 0.02
    assert result["adversarial_status"] == "ok"
    assert abs(result["adversarial_auc"] - 0.5) < 3 * result["adversarial_auc_stderr"]
    assert result["adversarial_rows"] == 5000
    assert result["rows"] == 6000 and result["baseline_rows"] == 5900
    assert result["rows_change"] == pytest.approx(0.0169, abs=1e-4)
    assert result["rows_status"] == "ok"
    assert result["missing_status"] == "ok" and result["constant_status"] == "ok"
    assert all(item["status"] == "ok" for item in result["features"])
    assert "score" not in [item["name"] for item in result["features"]]


def test_compare_alerts_on_a_shifted_distribution():
    rng = np.random.default_rng(9)
    result = compare(sample(rng, 3000, shift=1.5), sample(rng, 3000))
    assert result["psi_status"] == "alert"
    assert result["adversarial_status"] == "alert" and result["adversarial_auc"] > 0.8
    assert [item["name"] for item in result["features"][:2]] == ["x0", "x1"]
    assert result["features"][0]["status"] == "alert"
    assert len(result["features"]) == 5
    assert result["status"] == "alert"


def test_compare_alerts_on_constant_scores():
    rng = np.random.default_rng(10)
    current = sample(rng, 500)
    result = compare(current, None, current_scores=np.full(500, 0.7))
    assert result["constant"] is True and result["constant_status"] == "alert"
    assert result["status"] == "alert"


def test_compare_rates_missing_scores():
    rng = np.random.default_rng(11)
    current = sample(rng, 1000)
    scores = current["score"].to_numpy().copy()
    scores[:5] = np.nan  # 0.5%
    assert compare(current, None, current_scores=scores)["missing_status"] == "warning"
    scores[5:20] = np.inf  # 2%
    result = compare(current, None, current_scores=scores)
    assert result["missing_share"] == 0.02 and result["missing_status"] == "alert"


def test_compare_rates_the_change_in_rows_only_against_a_run():
    rng = np.random.default_rng(12)
    baseline = sample(rng, 1000)
    result = compare(sample(rng, 1300), baseline)
    assert result["rows_change"] == 0.3 and result["rows_status"] == "warning"
    assert compare(sample(rng, 400), baseline)["rows_status"] == "alert"
    reference = {"kind": "reference_scores", "rows": 1000}
    result = compare(sample(rng, 1300), baseline, descriptor=reference)
    assert result["baseline"] == reference
    assert result["rows_change"] is None and result["rows_status"] is None


def test_compare_result_is_plain_json():
    rng = np.random.default_rng(13)
    result = compare(sample(rng, 1000), sample(rng, 1000, shift=0.5))
    assert json.loads(json.dumps(result, allow_nan=False)) == result
    assert set(result) == {
        "status", "baseline", "rows", "baseline_rows", "rows_change", "rows_status",
        "psi", "psi_status", "adversarial_auc", "adversarial_auc_stderr", "adversarial_status",
        "adversarial_rows", "features", "missing_share", "missing_status", "constant",
        "constant_status", "histogram", "thresholds", "seconds",
    }  # fmt: skip
    assert result["thresholds"] == THRESHOLDS
    assert len(result["histogram"]["edges"]) == 21
    assert result["seconds"] >= 0
