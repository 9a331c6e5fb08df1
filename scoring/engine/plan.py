"""A batch's plan: units of a shard of models × a part of the rows, for any free worker.

Shards keep together the models that share columns, so each shard reads few columns
beyond its own and the slice's columns are read close to once across shards.
"""

import math


def shards(runs: list, size: int, features=lambda run: run.version.package["features"]) -> list:
    """The runs in shards of at most `size`, of even sizes: each shard starts from the run
    with the most features left, then takes the runs that add the fewest new columns to
    its union (most shared first)."""
    if len(runs) <= size:
        return [list(runs)] if runs else []
    bits: dict[str, int] = {}
    masks = []
    for run in runs:
        mask = 0
        for name in features(run):
            mask |= 1 << bits.setdefault(name, len(bits))
        masks.append(mask)
    count = math.ceil(len(runs) / size)
    target = math.ceil(len(runs) / count)
    remaining = sorted(range(len(runs)), key=lambda i: -masks[i].bit_count())
    planned = []
    while remaining:
        seed = remaining.pop(0)
        shard, union = [runs[seed]], masks[seed]
        while remaining and len(shard) < target:
            best = min(
                range(len(remaining)),
                key=lambda k: (
                    (masks[remaining[k]] & ~union).bit_count(),
                    -(masks[remaining[k]] & union).bit_count(),
                ),
            )
            chosen = remaining.pop(best)
            shard.append(runs[chosen])
            union |= masks[chosen]
        planned.append(shard)
    return planned
