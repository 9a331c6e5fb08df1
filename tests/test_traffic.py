"""A traffic split between champion and challenger, entity by entity."""

import numpy as np
import pyarrow as pa
import pytest

from scoring.engine import traffic


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
