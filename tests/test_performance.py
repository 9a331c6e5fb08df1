"""The ground-truth metrics against values worked by hand on small arrays, and the
bootstrap interval's coverage on simulated data whose true AUC is known."""

import math

import numpy as np
import pytest
from scipy.stats import norm

from scoring.quality import levels, performance
from scoring.quality.ground_truth import gini_lines

# Two negatives (0.1, 0.4) and two positives (0.35, 0.8): of the four (positive, negative)
# pairs, three rank the positive higher; 0.35 < 0.4 is the one that does not.
OUTCOMES = [0, 0, 1, 1]
SCORES = [0.1, 0.4, 0.35, 0.8]


def test_auc_and_gini_count_the_pairs_ranked_right():
    found = performance.classification(outcomes=OUTCOMES, scores=SCORES)
    assert found["auc"] == pytest.approx(3 / 4)
    assert found["gini"] == pytest.approx(2 * 3 / 4 - 1)


def test_ks_is_the_largest_gap_between_the_two_score_distributions():
    # Below 0.35 half the negatives and no positive; at 0.4 all negatives and half the
    # positives: the largest gap is 1/2.
    found = performance.classification(outcomes=OUTCOMES, scores=SCORES)
    assert found["ks"] == pytest.approx(0.5)
    assert found["positive_share"] == pytest.approx(0.5)


def test_calibration_puts_equal_counts_in_each_bin_with_their_mean_score_and_rate():
    scores = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    outcomes = [0, 0, 0, 1, 0, 1, 1, 1, 1, 1]
    bins = performance.calibration(outcomes=outcomes, scores=scores, bins=5)
    assert [b["rows"] for b in bins] == [2, 2, 2, 2, 2]
    assert [b["mean_score"] for b in bins] == pytest.approx([0.15, 0.35, 0.55, 0.75, 0.95])
    assert [b["observed_rate"] for b in bins] == pytest.approx([0, 0.5, 0.5, 1, 1])
    assert (bins[0]["low"], bins[-1]["high"]) == (0.1, 1.0)


def test_tied_scores_stay_in_one_calibration_bin():
    bins = performance.calibration(outcomes=[0, 1, 0, 1, 1], scores=[0.2, 0.2, 0.2, 0.2, 0.9])
    assert [b["rows"] for b in bins] == [4, 1]
    assert [b["observed_rate"] for b in bins] == pytest.approx([0.5, 1.0])


def test_regression_errors():
    found = performance.regression(outcomes=[1.0, 2.0, 3.0, 4.0], scores=[1.0, 2.0, 3.0, 6.0])
    assert found["rmse"] == pytest.approx(math.sqrt(4 / 4))  # one error of 2 among four
    assert found["mae"] == pytest.approx(2 / 4)
    low, high = found["mae_interval"]
    assert 0 <= low <= found["mae"] <= high <= 2


def test_the_interval_holds_the_estimate():
    rng = np.random.default_rng(3)
    outcomes = rng.integers(0, 2, 400)
    scores = rng.normal(outcomes * 0.8, 1)
    found = performance.classification(outcomes=outcomes, scores=scores)
    for name in ("auc", "gini", "ks"):
        low, high = found[f"{name}_interval"]
        assert low < found[name] < high, name


def test_a_large_runs_interval_comes_from_a_sample_and_sits_around_the_full_estimate(
    monkeypatch,
):
    rng = np.random.default_rng(5)
    outcomes = rng.integers(0, 2, 4000)
    scores = rng.normal(outcomes * 0.8, 1)
    whole = performance.classification(outcomes=outcomes, scores=scores)
    monkeypatch.setattr(performance, "BOOTSTRAP_ROWS", 1000)
    sampled = performance.classification(outcomes=outcomes, scores=scores)

    assert sampled["auc"] == whole["auc"]  # the estimate is of all the pairs
    for name in ("auc", "ks"):
        low, high = sampled[f"{name}_interval"]
        assert low < sampled[name] < high
        # A quarter of the pairs: about twice as wide (sqrt 4), never narrower.
        width = whole[f"{name}_interval"][1] - whole[f"{name}_interval"][0]
        assert 1.5 * width < high - low < 2.7 * width, name


def test_the_95_percent_interval_covers_the_true_auc_about_95_times_in_100():
    """Scores of positives ~ N(d, 1) and negatives ~ N(0, 1) have AUC = Phi(d / sqrt 2)."""
    shift, rows = 1.0, 300
    true_auc = norm.cdf(shift / math.sqrt(2))
    rng = np.random.default_rng(11)
    covered = 0
    for trial in range(100):
        outcomes = np.repeat([0, 1], rows)
        scores = rng.normal(outcomes * shift, 1)
        low, high = performance.classification(outcomes=outcomes, scores=scores, seed=trial)[
            "auc_interval"
        ]
        covered += low <= true_auc <= high
    # Binomial(100, 0.95) falls below 88 once in thousands of trials.
    assert 88 <= covered <= 100, covered


def test_a_target_that_is_not_0_or_1_is_refused_with_what_it_holds():
    with pytest.raises(ValueError, match="must be 0 or 1; it holds 0, 1, 2"):
        performance.classification(outcomes=[0, 1, 2], scores=[0.1, 0.5, 0.9])


def test_outcomes_of_one_class_are_refused():
    with pytest.raises(ValueError, match="all one class"):
        performance.classification(outcomes=[1, 1, 1], scores=[0.1, 0.5, 0.9])


@pytest.mark.parametrize(
    ("high", "expected"),
    [(0.45, "ok"), (0.40, "ok"), (0.39, "warning"), (0.30, "warning"), (0.29, "alert")],
)
def test_the_gini_status_compares_the_top_of_its_interval_with_the_lines(high, expected):
    lines = gini_lines({"meta": {"gini_oot": 0.40}})
    assert lines == {"expected_gini": 0.40, "gini_warn": 0.40, "gini_alert": 0.30}
    assert levels.below(high, lines["gini_warn"], lines["gini_alert"]) == expected


def test_the_package_params_set_the_gini_lines_over_its_meta():
    lines = gini_lines(
        {"meta": {"gini_oot": 0.5}, "params": {"gini_warn": 0.45, "gini_alert": 0.3}}
    )
    assert lines == {"expected_gini": 0.5, "gini_warn": 0.45, "gini_alert": 0.3}
    assert gini_lines({"meta": {}})["gini_warn"] is None  # measured, with no verdict
