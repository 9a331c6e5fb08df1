"""What the data-quality checks compare, kept while a run scores: no second read of the slice.

- A uniform sample of each run's rows (its features and its score), taken chunk by chunk
  as the bottom-k of keys hashed from the entity ids; the keys are kept with the rows, so
  the samples of the parts of a split slice merge into one uniform sample of the whole
  slice, and the shards of a fleet's batch, sampling the same entities, join into one.
- The package's `reference_scores`, saved once at validation: the baseline of the first run.

Both live in the scores bucket, beside the table: one sample per unit of a batch,
`_samples/batch-<id>/date-<date>/shard-<k>/part-<n>.parquet`, holding the features of all
its runs and a column `score:<run id>` each (written once: ten runs do not upload ten
copies of the rows), and `_reference/version-<id>.parquet`.
"""

from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from django.conf import settings

from scoring.packages import storage

KEY = "_key"


class RowSample:
    """At most `size` rows, uniformly drawn from every chunk of a slice, with each run's score.

    One sample serves every run of the slice: the chunk's columns are taken once, and each
    run's score rides along as a column `score:<run id>`.
    """

    def __init__(self, size: int):
        self.size = size
        self.table: pa.Table | None = None
        self.runs: list[int] = []

    def offer(self, chunk: pa.RecordBatch, scores: dict[int, pa.Array]) -> None:
        """A chunk's rows (the entity id first) and each run's scores of them."""
        if self.table is None:
            self.runs = list(scores)
        keys = row_keys(chunk.column(0))
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


def row_keys(ids: pa.Array) -> np.ndarray:
    """A key in [0, 1) for each entity id: a hash, the same wherever its row is read, so the
    samples of every shard and every part of a slice keep the same entities and join into
    one. (The next day's sample keeps the same entities too: drift is measured on them.)"""
    hashed = pd.util.hash_array(np.asarray(ids.to_numpy(zero_copy_only=False)))
    return (hashed >> np.uint64(11)).astype(np.float64) / 2.0**53


def of_run(table: pa.Table, run_id: int, features: list[str]) -> pa.Table:
    """A run's part of a slice's sample: the rows it scored, with its features, its score
    as `score`, the keys."""
    name = f"score:{run_id}"
    table = table.filter(pc.is_valid(table.column(name)))
    return table.select([*features, name, KEY]).rename_columns([*features, "score", KEY])


def bottom(table: pa.Table, size: int) -> pa.Table:
    """The `size` rows with the smallest keys: a uniform sample of what `table` sampled."""
    if table.num_rows <= size:
        return table
    keys = table.column(KEY).to_numpy()
    return table.take(np.argpartition(keys, size)[:size])


def sample_folder(batch_id: int, day: date) -> str:
    return f"{settings.SCORES_BUCKET}/_samples/batch-{batch_id}/date-{day.isoformat()}"


def save(
    batch_id: int, day: date, shard: int, part: int, sample: RowSample, run_ids: list[int]
) -> None:
    """The slice's sample, or a unit's (a shard of the runs x a part of the rows), with the
    scores of the runs in `run_ids`."""
    if sample.table is not None:
        save_table(batch_id, day, shard, part, sample.table, run_ids)


def save_table(
    batch_id: int, day: date, shard: int, part: int, table: pa.Table, run_ids: list[int]
) -> None:
    """A RowSample's table (or a Spark task's), with the scores of the runs in `run_ids`."""
    keep = {f"score:{run_id}" for run_id in run_ids}
    table = table.select(
        [name for name in table.column_names if not name.startswith("score:") or name in keep]
    )
    pq.write_table(
        table,
        f"{sample_folder(batch_id, day)}/shard-{shard:04d}/part-{part:05d}.parquet",
        filesystem=storage.arrow_filesystem(),
    )


def load(batch_id: int, day: date, columns: list[str], size: int) -> pa.Table | None:
    """The sample of a slice of a batch, with `columns` (features and `score:<run id>`
    columns) and the keys; None if it kept none.

    The parts of a shard merge into one sample of the slice; the shards' samples, which
    hold the same entities (`row_keys`), join into one, each adding its runs' scores."""
    from pyarrow import fs

    filesystem = storage.arrow_filesystem()
    found = filesystem.get_file_info(
        fs.FileSelector(sample_folder(batch_id, day), allow_not_found=True, recursive=True)
    )
    shards: dict[str, list[pa.Table]] = {}
    for info in sorted(found, key=lambda f: f.path):
        if info.type != fs.FileType.File:
            continue
        with filesystem.open_input_file(info.path) as source:
            # ParquetFile.read skips the columns a part lacks: only the check of the run
            # that asks for one fails, not the read for every run.
            part = pq.ParquetFile(source).read(columns=[*columns, KEY])
        shards.setdefault(info.path.rsplit("/", 1)[0], []).append(part)
    if not shards:
        return None
    merged = None
    for parts in shards.values():
        shard = bottom(pa.concat_tables(parts, promote_options="default"), size)
        if merged is None:
            merged = shard
            continue
        added = [name for name in shard.column_names if name not in merged.column_names]
        if added:
            merged = merged.join(shard.select([KEY, *added]), KEY, join_type="left outer")
    return merged


def first_row(batch_id: int, day: date, columns: list[str]) -> dict | None:
    """One row of a slice's sample with `columns`, from the first part that has them all;
    None when none has (a sample of other models' features) or the batch kept none. An
    example of the slice's rows read from one small file, not from the feature source."""
    from pyarrow import fs

    filesystem = storage.arrow_filesystem()
    found = filesystem.get_file_info(
        fs.FileSelector(sample_folder(batch_id, day), allow_not_found=True, recursive=True)
    )
    for info in sorted(found, key=lambda f: f.path):
        if info.type != fs.FileType.File:
            continue
        with filesystem.open_input_file(info.path) as source:
            part = pq.ParquetFile(source)
            if not set(columns) <= set(part.schema_arrow.names):
                continue
            for batch in part.iter_batches(batch_size=1, columns=columns):
                if batch.num_rows:
                    return batch.slice(0, 1).to_pylist()[0]
    return None


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
