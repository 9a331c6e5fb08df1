"""A worker's bounded pool of sandboxes: which models share a sandbox, and how many run.

A worker never has more live sandboxes than its pool (SANDBOX_POOL), whatever the number
of models: one sandbox serves several models of one owner, loaded once for the whole
unit, and never the packages of two owners. Only as many sandboxes score at once as the
machine has cores. When a unit's owners are more than the pool, their sandboxes take turns
on each chunk (scoring.engine.pipeline): each loads its models, scores and makes room.
"""

import os
from collections import defaultdict


def default_pool_size(cores: int | None = None, memory_bytes: int | None = None) -> int:
    """One sandbox a core, fewer if each could not have a GiB of memory."""
    cores = cores or os.cpu_count() or 1
    if memory_bytes is None:
        memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(1, min(cores, memory_bytes // 1024**3))


def busy_limit(pool: int, cores: int | None = None) -> int:
    """How many sandboxes score at once: no more than the cores, each single-threaded."""
    return max(1, min(pool, cores or os.cpu_count() or 1))


def waves(runs: list, pool: int, owner=lambda run: run.deployment.owner_key) -> list[list[list]]:
    """The runs in groups that share a sandbox (one owner each), at most `pool` groups a
    wave. An owner with many runs gets as many sandboxes as the pool leaves room for, so
    the cores share the work; owners beyond the pool fall in a later wave."""
    by_owner = defaultdict(list)
    for run in runs:
        by_owner[owner(run)].append(run)
    owners = sorted(by_owner.values(), key=len, reverse=True)
    return [spread(owners[start : start + pool], pool) for start in range(0, len(owners), pool)]


def spread(owners: list[list], pool: int) -> list[list]:
    """Give each owner one sandbox, then the rest of the pool to those with the most runs
    per sandbox; each owner's runs dealt out over its sandboxes."""
    sandboxes = [1] * len(owners)
    for _ in range(pool - len(owners)):
        load = [len(runs) / count for runs, count in zip(owners, sandboxes, strict=True)]
        busiest = max(range(len(owners)), key=load.__getitem__)
        if load[busiest] <= 1:
            break
        sandboxes[busiest] += 1
    return [
        runs[index::count]
        for runs, count in zip(owners, sandboxes, strict=True)
        for index in range(count)
    ]
