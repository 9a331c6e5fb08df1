"""A batch's plan: units of a shard of models × a part of the rows, for any free worker.

Shards keep together the models that share columns, so each shard reads few columns
beyond its own and the slice's columns are read close to once across shards.
"""

import math


def shards(
    runs: list,
    size: int,
    features=lambda run: run.version.package["features"],
    together=lambda run: run.deployment_id,
) -> list:
    """The runs in shards of at most `size`, of even sizes: each shard starts from the run
    with the most features left, then takes the runs that add the fewest new columns to
    its union (most shared first).

    Runs with the same `together` key (a model's champion and challenger) stay in one
    shard: the challenger shares the champion's read of the slice."""
    if len(runs) <= size:
        return [list(runs)] if runs else []
    bits: dict[str, int] = {}
    groups: dict = {}
    for run in runs:
        groups.setdefault(together(run), []).append(run)
    items = list(groups.values())
    masks = []
    for item in items:
        mask = 0
        for name in (name for run in item for name in features(run)):
            mask |= 1 << bits.setdefault(name, len(bits))
        masks.append(mask)
    count = math.ceil(len(runs) / size)
    target = math.ceil(len(runs) / count)
    remaining = sorted(range(len(items)), key=lambda i: -masks[i].bit_count())
    planned = []
    while remaining:
        seed = remaining.pop(0)
        shard, union = list(items[seed]), masks[seed]
        while True:
            fitting = [
                k for k in range(len(remaining)) if len(shard) + len(items[remaining[k]]) <= target
            ]
            if not fitting:
                break
            best = min(
                fitting,
                key=lambda k: (
                    (masks[remaining[k]] & ~union).bit_count(),
                    -(masks[remaining[k]] & union).bit_count(),
                ),
            )
            chosen = remaining.pop(best)
            shard.extend(items[chosen])
            union |= masks[chosen]
        planned.append(shard)
    return planned
