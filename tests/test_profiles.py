"""The profile a run keeps of its scores while it writes them (scoring.quality.profiles)."""

import json
import math

import numpy as np
import pyarrow as pa
import pytest

from scoring.quality import metrics, profiles
from scoring.quality.profiles import ScoreProfile

RNG = np.random.default_rng(0)
DISTRIBUTIONS = {
    "probabilities": RNG.beta(2, 5, 60_000),
    "signed": RNG.normal(0, 100, 60_000),
    "skewed": RNG.lognormal(0, 2, 60_000),
    "zeros and ties": np.concatenate([np.zeros(20_000), RNG.integers(0, 50, 40_000) / 50]),
}


def profile_of(values, against=None, chunks: int = 7) -> ScoreProfile:
    profile = ScoreProfile(against)
    for chunk in np.array_split(values, chunks):
        profile.add(pa.array(chunk))
    return profile


def raw_psi(baseline: np.ndarray, current: np.ndarray, edges) -> float:
    edges = np.asarray(edges)
    expected = profiles.bin_counts(baseline, edges) / baseline.size
    actual = profiles.bin_counts(current, edges) / current.size
    return profiles.psi_of_shares(expected, actual)


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_merged_parts_give_the_profile_of_all_the_scores(name):
    values = DISTRIBUTIONS[name]
    against = profiles.decile_edges(values[::5]).tolist()
    parts = [profile_of(part, against) for part in np.array_split(values, 3)]
    merged = ScoreProfile.from_json(json.loads(json.dumps(parts[0].to_json())))
    for part in parts[1:]:
        merged.merge(ScoreProfile.from_json(json.loads(json.dumps(part.to_json()))))
    assert merged.summary() == profile_of(values, against).summary()


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_each_decile_edge_is_within_a_256th_above_the_exact_decile(name):
    values = DISTRIBUTIONS[name]
    edges = profile_of(values).summary()["deciles"]["edges"]
    ordered = np.sort(values)
    positions = profiles.DECILES * (values.size - 1)
    below, above = ordered[np.floor(positions).astype(int)], ordered[np.ceil(positions).astype(int)]
    # Equal edges merge (ties): every edge is one of the deciles' edges. The bucket of 0
    # reaches up to the smallest subnormal floats.
    for edge in edges:
        assert any(
            low <= edge <= high + abs(high) / 256 + 1e-300
            for low, high in zip(below, above, strict=True)
        ), edge
    assert len(edges) == len(np.unique(np.quantile(values, profiles.DECILES)))


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_the_counts_in_the_profile_deciles_are_exact(name):
    values = DISTRIBUTIONS[name]
    deciles = profile_of(values).summary()["deciles"]
    counts = profiles.bin_counts(values, np.array(deciles["edges"]))
    assert deciles["counts"] == counts.tolist()


@pytest.mark.parametrize("shift", [0.0, 0.05, 0.3])
def test_psi_of_two_profiles_is_the_psi_of_the_raw_scores_in_the_same_bins(shift):
    baseline = RNG.beta(2, 5, 50_000)
    current = np.clip(RNG.beta(2, 5, 40_000) + shift, 0, 1)
    yesterday = profile_of(baseline).summary()
    edges = yesterday["deciles"]["edges"]
    today = profile_of(current, against=edges).summary()
    assert profiles.psi(yesterday, today) == pytest.approx(
        raw_psi(baseline, current, edges), abs=1e-12
    )
    # Against PSI in the exact deciles (metrics.psi), the bins moved by < 1/256 of a value.
    assert profiles.psi(yesterday, today) == pytest.approx(metrics.psi(baseline, current), abs=0.01)


def test_without_counts_in_the_baseline_bins_psi_comes_from_the_percentiles():
    baseline, current = RNG.beta(2, 5, 50_000), RNG.beta(2.5, 5, 50_000)
    yesterday = profile_of(baseline).summary()
    today = profile_of(current).summary()  # counted in no baseline's bins
    assert today["against"] is None
    exact = raw_psi(baseline, current, yesterday["deciles"]["edges"])
    assert profiles.psi(yesterday, today) == pytest.approx(exact, abs=0.005)


def test_a_profile_counts_rows_missing_scores_and_the_extremes():
    profile = ScoreProfile()
    profile.add(pa.array([0.2, None, 0.7], pa.float64()))
    profile.add(np.array([np.inf, -0.0, 0.5]))
    summary = profile.summary()
    assert (summary["rows"], summary["missing"]) == (6, 2)
    assert (summary["min"], summary["max"]) == (0.0, 0.7)
    assert sum(summary["deciles"]["counts"]) == 4
    assert summary["percentiles"][0] == 0.0 and summary["percentiles"][-1] == 0.7


def test_a_profile_without_a_finite_score_compares_to_nothing():
    empty = profile_of(np.full(10, np.nan), chunks=2).summary()
    assert empty["deciles"] is None and empty["min"] is None
    assert math.isnan(profiles.psi(profile_of(RNG.random(100)).summary(), empty))


def test_a_stored_profile_is_small():
    summary = profile_of(RNG.beta(2, 5, 1_000_000), against=list(np.linspace(0.1, 0.9, 9)))
    assert len(json.dumps(summary.summary())) < 3000


# --- the display histogram, from two profiles -----------------------------------------


def test_display_histogram_uses_zero_to_one_for_probabilities():
    histogram = profiles.display_histogram(
        profiles.summarize(np.array([0.12, 0.22])),
        profiles.summarize(np.array([0.33, 0.91, np.nan])),
    )
    assert histogram["edges"] == [round(x, 6) for x in np.linspace(0, 1, 21)]
    assert histogram["current"][6] == histogram["current"][18] == 0.5
    assert histogram["baseline"][2] == histogram["baseline"][4] == 0.5


def test_display_histogram_of_a_streamed_profile_is_exact_over_zero_to_one():
    values = RNG.beta(2, 5, 30_000)
    streamed = profile_of(values).summary()
    assert streamed["display"] == np.histogram(values, bins=20, range=(0, 1))[0].tolist()


def test_display_histogram_spans_both_sides_otherwise():
    histogram = profiles.display_histogram(None, profiles.summarize(np.array([-1.0, 3.0])))
    assert histogram["edges"][0] == -1.0 and histogram["edges"][-1] == 3.0
    assert histogram["baseline"] is None
    assert sum(histogram["current"]) == pytest.approx(1.0)
    constant = profiles.display_histogram(
        profiles.summarize(np.array([5.0])), profiles.summarize(np.array([5.0, 5.0]))
    )
    assert constant["edges"][0] == 4.5 and constant["edges"][-1] == 5.5


def test_display_histogram_of_other_scores_follows_their_distribution():
    values = RNG.normal(0, 3, 50_000)
    histogram = profiles.display_histogram(None, profile_of(values).summary())
    edges = np.array(histogram["edges"])
    exact = np.histogram(values, bins=edges)[0] / values.size
    np.testing.assert_allclose(histogram["current"], exact, atol=0.01)
