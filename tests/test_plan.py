"""Planning a fleet: shards of models that share columns, parts of rows, the sandbox pool."""

from types import SimpleNamespace

import pytest

from scoring.engine import plan, pool


def model(run_id: int, features: list[str], owner: int = 1):
    return SimpleNamespace(
        id=run_id,
        deployment_id=run_id,
        owner=owner,
        version=SimpleNamespace(package={"features": features}),
    )


def test_models_that_share_columns_land_in_the_same_shard():
    churn = [model(i, ["age", "tenure", "region"]) for i in range(4)]
    spend = [model(10 + i, ["monthly_spend", "calls", "sms"]) for i in range(4)]
    mixed = [churn[0], spend[0], churn[1], spend[1], churn[2], spend[2], churn[3], spend[3]]

    shards = plan.shards(mixed, size=4)

    assert sorted(sorted(r.id for r in shard) for shard in shards) == [
        [0, 1, 2, 3],
        [10, 11, 12, 13],
    ]


def test_shards_are_even_never_above_their_size_and_hold_every_run_once():
    runs = [model(i, [f"f{(i * 7 + k) % 50}" for k in range(10)]) for i in range(1001)]

    shards = plan.shards(runs, size=250)

    assert sorted(len(s) for s in shards) == [197, 201, 201, 201, 201]
    assert sorted(r.id for shard in shards for r in shard) == list(range(1001))


def test_few_models_make_one_shard_and_none_make_none():
    runs = [model(i, ["a"]) for i in range(3)]
    assert plan.shards(runs, size=250) == [runs]
    assert plan.shards([], size=250) == []


def test_grouping_by_columns_reads_fewer_columns_than_cutting_in_order():
    # 4 teams, each with 50 models drawn from its own 20 columns, uploaded interleaved.
    runs = [model(i, [f"team{i % 4}_{(i * 3 + k) % 20}" for k in range(8)]) for i in range(200)]

    def columns_read(shards):
        return sum(
            len({f for r in shard for f in r.version.package["features"]}) for shard in shards
        )

    planned = plan.shards(runs, size=50)
    in_order = [runs[i : i + 50] for i in range(0, 200, 50)]
    assert columns_read(planned) == 80  # each team's 20 columns, read once
    assert columns_read(in_order) == 320


@pytest.mark.parametrize(
    ("owners", "pool_size", "expected"),
    [
        # one owner: its models spread over the whole pool, dealt out evenly
        ({1: 10}, 2, [[[5, 5]]]),
        # two owners, pool of 4: each gets sandboxes in proportion to its models
        ({1: 9, 2: 3}, 4, [[[3, 3, 3, 3]]]),
        # more owners than the pool: later owners wait for a second wave
        ({1: 2, 2: 1, 3: 1}, 2, [[[2, 1]], [[1]]]),
        # never more sandboxes than models
        ({1: 1}, 8, [[[1]]]),
    ],
)
def test_the_pool_serves_each_owner_in_sandboxes_of_its_own(owners, pool_size, expected):
    runs = [model(owner * 100 + i, ["a"], owner) for owner, n in owners.items() for i in range(n)]

    waves = pool.waves(runs, pool_size, owner=lambda r: r.owner)

    assert [[[len(g) for g in wave]] for wave in waves] == expected
    for wave in waves:
        assert len(wave) <= pool_size
        for group in wave:
            assert len({r.owner for r in group}) == 1, "two owners' packages in one sandbox"
    assert sorted(r.id for wave in waves for g in wave for r in g) == sorted(r.id for r in runs)


def test_the_pool_size_follows_cores_and_memory_and_the_setting(settings):
    gib = 1024**3
    assert pool.default_pool_size(cores=8, memory_bytes=64 * gib) == 8
    assert pool.default_pool_size(cores=8, memory_bytes=3 * gib) == 3  # a GiB a sandbox
    assert pool.default_pool_size(cores=2, memory_bytes=gib // 2) == 1
    assert pool.busy_limit(8, cores=2) == 2
    assert pool.busy_limit(1, cores=2) == 1


def test_a_challenger_lands_in_its_champions_shard_to_share_the_read():
    others = [model(i, [f"f{i}"]) for i in range(6)]
    champion = model(100, ["age", "tenure"])
    challenger = SimpleNamespace(**{**vars(model(101, ["calls", "sms"])), "deployment_id": 100})

    shards = plan.shards([champion, *others, challenger], size=2)

    together = [shard for shard in shards if champion in shard]
    assert together == [[champion, challenger]]
    assert sorted(r.id for shard in shards for r in shard) == [0, 1, 2, 3, 4, 5, 100, 101]
