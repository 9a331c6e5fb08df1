"""A traffic split between a champion and its challenger: which entities each scores.

With a `split_share` on its runs, the challenger keeps the entities whose hash falls below
the share, the champion the rest: the two sets are disjoint, cover the slice, and an entity
stays on the same side every day (the hash of its id, not of its row's place). Both models
still score the whole chunk they share in memory; only the kept rows are written.

The hash is pandas' `hash_array` with its fixed key: the same in every process and on every
host. Integer ids are mixed as numbers (0.15 s a million), others as text (SipHash, about
2 s a million): an id column keeps its type from day to day, and so its entities' sides.
"""

import threading

import numpy as np
import pandas as pd
import pyarrow as pa

BUCKETS = 10_000
CHALLENGER = "challenger"


def buckets(entity_ids: pa.Array) -> np.ndarray:
    """Each entity's bucket, 0 to BUCKETS - 1, from its id alone."""
    if pa.types.is_integer(entity_ids.type) and entity_ids.null_count == 0:
        values = entity_ids.cast(pa.int64()).to_numpy()
    else:
        values = entity_ids.cast(pa.string()).to_numpy(zero_copy_only=False)
    return (pd.util.hash_array(values) % BUCKETS).astype(np.int64)


class ChunkSides:
    """The sides of a chunk's entities, hashed once for all the runs that write the chunk
    (a champion and its challenger, in writing threads of their own)."""

    def __init__(self, entity_ids: pa.Array):
        self.entity_ids = entity_ids
        self.lock = threading.Lock()
        self.buckets: np.ndarray | None = None

    def kept(self, share: float | None, role: str) -> np.ndarray | None:
        """The rows a run of this role keeps under the split; None: all of them."""
        if share is None:
            return None
        with self.lock:
            if self.buckets is None:
                self.buckets = buckets(self.entity_ids)
        challenger_side = self.buckets < round(share * BUCKETS)
        return challenger_side if role == CHALLENGER else ~challenger_side


def kept(entity_ids: pa.Array, share: float | None, role: str) -> np.ndarray | None:
    """The rows a run of this role keeps under the split; None: all of them."""
    return ChunkSides(entity_ids).kept(share, role)
