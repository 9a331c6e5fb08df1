"""A traffic split between a champion and its challenger: which entities each scores.

With a `split_share` on its runs, the challenger keeps the entities whose hash falls below
the share, the champion the rest: the two sets are disjoint, cover the slice, and an entity
stays on the same side every day (the hash of its id, not of its row's place). Both models
still score the whole chunk they share in memory; only the kept rows are written.

The hash is pandas' SipHash of the id's text with its fixed key: the same in every process,
on every host, and for an id read as an integer or as its digits.
"""

import numpy as np
import pandas as pd
import pyarrow as pa

BUCKETS = 10_000
CHALLENGER = "challenger"


def buckets(entity_ids: pa.Array) -> np.ndarray:
    """Each entity's bucket, 0 to BUCKETS - 1, from its id alone."""
    text = np.asarray(entity_ids.cast(pa.string()).to_pylist(), dtype=object)
    return (pd.util.hash_array(text) % BUCKETS).astype(np.int64)


def kept(entity_ids: pa.Array, share: float | None, role: str) -> np.ndarray | None:
    """The rows a run of this role keeps under the split; None: all of them."""
    if share is None:
        return None
    challenger_side = buckets(entity_ids) < round(share * BUCKETS)
    return challenger_side if role == CHALLENGER else ~challenger_side
