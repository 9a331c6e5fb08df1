"""A traffic split between champion and challenger, entity by entity."""

import numpy as np
import pyarrow as pa
import pytest

from scoring.engine import traffic
from scoring.models import ScoringRun
from scoring.quality import assessment, levels, metrics, profiles


@pytest.mark.parametrize(
    "ids",
    [pa.array(np.arange(20_000)), pa.array([f"C{n:07d}" for n in range(20_000)])],
    ids=["integer ids", "text ids"],
)
def test_a_ten_percent_split_is_disjoint_covers_the_slice_and_holds_each_entity(ids):
    challenger = traffic.kept(ids, 0.1, "challenger")
    champion = traffic.kept(ids, 0.1, "champion")

    assert not np.any(challenger & champion) and np.all(challenger | champion)
    assert 0.09 < challenger.mean() < 0.11
    # The next day: fewer entities, in another order; each keeps its side.
    order = np.random.default_rng(1).permutation(len(ids))[:15_000]
    next_day = traffic.kept(ids.take(pa.array(order)), 0.1, "challenger")
    assert np.array_equal(next_day, challenger[order])


def test_without_a_share_each_side_keeps_every_entity():
    assert traffic.kept(pa.array([1, 2, 3]), None, "challenger") is None


@pytest.mark.parametrize(
    ("role", "rows", "status"),
    [("challenger", 30_203, "ok"), ("champion", 69_797, "ok"), ("challenger", 12_000, "alert")],
)
def test_a_split_runs_rows_are_checked_against_its_side_of_a_full_run(role, rows, status):
    rng = np.random.default_rng(3)
    full_run = ScoringRun(role=role, split_share=None)
    split_run = ScoringRun(role=role, split_share=0.3)
    result = metrics.compare_profiles(
        current_profile=profiles.summarize(rng.random(rows)),
        baseline_profile=profiles.summarize(rng.random(100_000)),
        samples=None,
        thresholds=levels.site_thresholds(),
        baseline={"kind": "run", "run_id": 1, "date": "2026-11-28", "rows": 100_000},
        baseline_rows_scale=assessment.rows_scale(split_run, full_run),
    )
    side = 30_000 if role == "challenger" else 70_000
    assert result["baseline_rows"] == side
    assert result["rows_status"] == status
    assert assessment.rows_scale(split_run, split_run) == 1.0
