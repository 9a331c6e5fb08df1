"""What the data-quality checks compare, kept while a run scores: no second read of the slice.

- A uniform sample of each run's rows (its features and its score), taken chunk by chunk
  as the bottom-k of random keys; the keys are kept with the rows, so the samples of the
  parts of a split slice merge into one uniform sample of the whole slice.
- The package's `reference_scores`, saved once at validation: the baseline of the first run.

Both live in the scores bucket, beside the table: `_samples/run-<id>/part-<n>.parquet`
and `_reference/version-<id>.parquet`.
"""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from django.conf import settings

from scoring import storage

KEY = "_key"


class RowSample:
    """At most `size` rows, uniformly drawn from every chunk offered."""

    def __init__(self, size: int):
        self.size = size
        self.rng = np.random.default_rng()
        self.table: pa.Table | None = None

    def offer(self, chunk: pa.RecordBatch, columns: list[str], scores: pa.Array) -> None:
        keys = self.rng.random(chunk.num_rows)
        if self.table is not None and self.table.num_rows >= self.size:
            # Only rows that beat the largest kept key can enter: few, once the sample is full.
            keys_kept = self.table.column(KEY)
            take = np.flatnonzero(keys < pc.max(keys_kept).as_py())
        else:
            take = np.arange(chunk.num_rows)
        if not len(take):
            return
        rows = pa.Table.from_batches([chunk.select(columns)]).take(take)
        rows = rows.append_column("score", scores.take(take)).append_column(
            KEY, pa.array(keys[take])
        )
        merged = rows if self.table is None else pa.concat_tables([self.table, rows])
        self.table = bottom(merged, self.size)


def bottom(table: pa.Table, size: int) -> pa.Table:
    """The `size` rows with the smallest keys: a uniform sample of what `table` sampled."""
    if table.num_rows <= size:
        return table
    keys = table.column(KEY).to_numpy()
    return table.take(np.argpartition(keys, size)[:size])


def sample_key(run_id: int, part: int) -> str:
    return f"{settings.SCORES_BUCKET}/_samples/run-{run_id}/part-{part:05d}.parquet"


def save(run_id: int, part: int, sample: RowSample) -> None:
    if sample.table is not None:
        pq.write_table(
            sample.table, sample_key(run_id, part), filesystem=storage.arrow_filesystem()
        )


def load(run_id: int, size: int) -> pd.DataFrame | None:
    """The run's sample (parts merged), or None when it kept none."""
    from pyarrow import fs

    filesystem = storage.arrow_filesystem()
    folder = f"{settings.SCORES_BUCKET}/_samples/run-{run_id}"
    found = filesystem.get_file_info(fs.FileSelector(folder, allow_not_found=True))
    parts = [
        pq.read_table(f.path, filesystem=filesystem) for f in sorted(found, key=lambda f: f.path)
    ]
    if not parts:
        return None
    merged = bottom(pa.concat_tables(parts, promote_options="default"), size)
    return merged.drop_columns([KEY]).to_pandas()


def reference_key(version_id: int) -> str:
    return f"{settings.SCORES_BUCKET}/_reference/version-{version_id}.parquet"


def save_reference(version_id: int, scores: np.ndarray) -> None:
    table = pa.table({"score": pa.array(np.asarray(scores, dtype=np.float64))})
    pq.write_table(table, reference_key(version_id), filesystem=storage.arrow_filesystem())


def load_reference(version_id: int) -> np.ndarray | None:
    try:
        table = pq.read_table(reference_key(version_id), filesystem=storage.arrow_filesystem())
    except FileNotFoundError:
        return None
    return table.column("score").to_numpy()
