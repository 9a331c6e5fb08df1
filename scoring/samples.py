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
    """At most `size` rows, uniformly drawn from every chunk of a slice, with each run's score.

    One sample serves every run of the slice: the chunk's columns are taken once, and each
    run's score rides along as a column `score:<run id>`.
    """

    def __init__(self, size: int):
        self.size = size
        self.rng = np.random.default_rng()
        self.table: pa.Table | None = None
        self.runs: list[int] = []

    def offer(self, chunk: pa.RecordBatch, scores: dict[int, pa.Array]) -> None:
        if self.table is None:
            self.runs = list(scores)
        keys = self.rng.random(chunk.num_rows)
        if self.table is not None and self.table.num_rows >= self.size:
            # Only rows that beat the largest kept key can enter: few, once the sample is full.
            take = np.flatnonzero(keys < pc.max(self.table.column(KEY)).as_py())
        else:
            take = np.arange(chunk.num_rows)
        if len(take) > self.size:  # of this chunk, only its `size` smallest keys can stay
            take = take[np.argpartition(keys[take], self.size)[: self.size]]
        if not len(take):
            return
        rows = pa.Table.from_batches([chunk]).take(take)
        for run_id in self.runs:  # a run that failed meanwhile: nulls, never saved
            values = scores.get(run_id)
            column = values.take(take) if values is not None else pa.nulls(len(take), pa.float64())
            rows = rows.append_column(f"score:{run_id}", column)
        rows = rows.append_column(KEY, pa.array(keys[take]))
        merged = rows if self.table is None else pa.concat_tables([self.table, rows])
        self.table = bottom(merged, self.size)

    def of_run(self, run_id: int, features: list[str]) -> pa.Table | None:
        if self.table is None:
            return None
        return self.table.select([*features, f"score:{run_id}", KEY]).rename_columns(
            [*features, "score", KEY]
        )


def bottom(table: pa.Table, size: int) -> pa.Table:
    """The `size` rows with the smallest keys: a uniform sample of what `table` sampled."""
    if table.num_rows <= size:
        return table
    keys = table.column(KEY).to_numpy()
    return table.take(np.argpartition(keys, size)[:size])


def sample_key(run_id: int, part: int) -> str:
    return f"{settings.SCORES_BUCKET}/_samples/run-{run_id}/part-{part:05d}.parquet"


def save(run_id: int, part: int, sample: RowSample, features: list[str]) -> None:
    table = sample.of_run(run_id, features)
    if table is not None:
        pq.write_table(table, sample_key(run_id, part), filesystem=storage.arrow_filesystem())


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
