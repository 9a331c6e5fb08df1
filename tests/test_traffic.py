"""A traffic split between champion and challenger, entity by entity."""

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest

from scoring.engine import scores, traffic
from scoring.engine.chunk_scoring import Scorer
from scoring.models import ScoringRun
from scoring.quality import assessment, levels, metrics, profiles, samples
from tests.factories.scores_table import DAY, Run


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


def test_a_champion_and_its_challenger_writing_a_chunk_hash_its_ids_once(table, monkeypatch):
    """Hashing a million text ids takes about 2 s: once per chunk, not once per side."""
    hashed = []
    hash_ids = traffic.buckets
    monkeypatch.setattr(traffic, "buckets", lambda ids: hashed.append(len(ids)) or hash_ids(ids))
    ids = pa.array([f"C{n:07d}" for n in range(10_000)])
    sides = traffic.ChunkSides(ids)
    scorers = [
        Scorer(run, scores.RunWriter(run), samples.RowSample(100))
        for run in (
            Run(id=1, deployment_id=1, date=DAY, role="champion", split_share=0.3),
            Run(id=2, deployment_id=1, date=DAY, role="challenger", split_share=0.3),
        )
    ]
    values = pa.array(np.random.default_rng(0).random(len(ids)))

    with ThreadPoolExecutor(max_workers=2) as writes:  # as the pipeline's writing threads
        written = [writes.submit(s.write, sides, values, datetime.now(UTC), True) for s in scorers]
    assert [future.result() for future in written] == [None, None]

    assert hashed == [len(ids)]
    champion, challenger = (scorer.writer.rows for scorer in scorers)
    assert champion + challenger == len(ids) and 0.25 < challenger / len(ids) < 0.35
