"""The row sample a slice keeps while it scores: uniform, bounded, each run's score beside its row."""

import uuid
from datetime import date

import numpy as np
import pyarrow as pa

from scoring.quality import samples
from scoring.quality.samples import KEY, RowSample, bottom, of_run

CHUNKS, ROWS, SIZE = 10, 1000, 500


def chunk(index: int) -> pa.RecordBatch:
    ids = np.arange(index * ROWS, (index + 1) * ROWS)
    return pa.RecordBatch.from_arrays([pa.array(ids), pa.array(ids % 7)], names=["entity_id", "x"])


def offer_all(sample: RowSample) -> None:
    for index in range(CHUNKS):
        batch = chunk(index)
        ids = batch.column(0).to_numpy()
        sample.offer(batch, {1: pa.array(ids * 2.0), 2: pa.array(ids * 3.0)})


def test_the_sample_keeps_size_rows_drawn_evenly_from_every_chunk():
    sample = RowSample(SIZE)
    offer_all(sample)
    ids = sample.table.column("entity_id").to_numpy()
    assert len(ids) == SIZE and len(set(ids)) == SIZE
    per_chunk = np.bincount(ids // ROWS, minlength=CHUNKS)
    # Binomial(500, 0.1): 50 rows a chunk, standard deviation 6.7; 20..80 is beyond 4.
    assert per_chunk.min() >= 20 and per_chunk.max() <= 80, per_chunk


def test_each_run_gets_its_features_and_its_own_score_of_the_same_rows():
    sample = RowSample(SIZE)
    offer_all(sample)
    first, second = of_run(sample.table, 1, ["x"]), of_run(sample.table, 2, ["entity_id"])
    assert first.column_names == ["x", "score", KEY]
    ids = sample.table.column("entity_id").to_numpy()
    np.testing.assert_array_equal(first.column("score").to_numpy(), ids * 2.0)
    np.testing.assert_array_equal(second.column("score").to_numpy(), ids * 3.0)
    np.testing.assert_array_equal(first.column("x").to_numpy(), ids % 7)


def test_a_run_that_failed_midway_keeps_only_the_rows_it_scored():
    sample = RowSample(SIZE)
    for index in range(CHUNKS):
        batch = chunk(index)
        ids = pa.array(batch.column(0).to_numpy() * 1.0)
        sample.offer(batch, {1: ids, 2: ids} if index < 5 else {1: ids})
    ids = sample.table.column("entity_id").to_numpy()
    second = of_run(sample.table, 2, []).column("score")
    assert second.null_count == 0
    assert len(second) == int((ids < 5 * ROWS).sum()) > 0


def test_every_shard_of_a_slice_samples_the_same_entities():
    """Two shards read the same slice: their samples keep the same rows, so they join."""
    first, second = RowSample(SIZE), RowSample(SIZE)
    for index in range(CHUNKS):
        batch = chunk(index)
        ids = batch.column(0).to_numpy()
        first.offer(batch, {1: pa.array(ids * 2.0)})
        second.offer(batch, {2: pa.array(ids * 3.0)})
    assert sorted(first.table.column("entity_id").to_pylist()) == sorted(
        second.table.column("entity_id").to_pylist()
    )


def test_the_samples_of_parts_merge_into_one_of_the_same_size():
    parts = []
    for part in range(3):  # each part of the slice: other rows
        sample = RowSample(SIZE)
        for index in range(CHUNKS):
            batch = chunk(part * CHUNKS + index)
            sample.offer(batch, {1: pa.array(batch.column(0).to_numpy() * 2.0)})
        parts.append(sample.table)
    merged = bottom(pa.concat_tables(parts), SIZE)
    assert merged.num_rows == SIZE
    keys = np.sort(np.concatenate([t.column(KEY).to_numpy() for t in parts]))
    np.testing.assert_array_equal(np.sort(merged.column(KEY).to_numpy()), keys[:SIZE])


def offer_rows(sample: RowSample, chunks: range, scores) -> None:
    for index in chunks:
        batch = chunk(index)
        ids = batch.column(0).to_numpy()
        sample.offer(batch, {run_id: pa.array(ids * factor) for run_id, factor in scores.items()})


def test_a_slice_sample_kept_in_parts_is_read_once_for_all_its_runs(bucket):
    """On the real S3 server: the parts merge into one sample, each run's score column
    comes along, and a column no part kept is left out instead of failing the read."""
    batch_id, day = uuid.uuid4().int % 10**9, date(2026, 11, 23)
    halves = range(0, CHUNKS // 2), range(CHUNKS // 2, CHUNKS)
    for part, (rows, run_ids) in enumerate(zip(halves, ([1, 2], [1]), strict=True)):
        sample = RowSample(SIZE)  # run 2 failed in the second part
        offer_rows(sample, rows, {1: 2.0, 2: 3.0})
        samples.save(batch_id, day, 0, part, sample, run_ids)
    table = samples.load(batch_id, day, ["x", "score:1", "score:2", "score:3"], SIZE)
    assert table.num_rows == SIZE
    assert table.column_names == ["x", "score:1", "score:2", KEY]
    ids = table.column("score:1").to_numpy() / 2
    np.testing.assert_array_equal(table.column("x").to_numpy(), ids % 7)
    assert 0 < table.column("score:2").null_count < SIZE


def test_the_shards_of_a_fleet_batch_join_into_one_sample_with_every_runs_scores(bucket):
    """Two shards of one batch and date, each split in two parts: no shard's sample
    overwrites another's, and each run finds its score on every row of the sample."""
    batch_id, day = uuid.uuid4().int % 10**9, date(2026, 11, 24)
    halves = range(0, CHUNKS // 2), range(CHUNKS // 2, CHUNKS)
    for shard, scores in enumerate(({1: 2.0, 2: 3.0}, {3: 5.0})):
        for part, rows in enumerate(halves):
            sample = RowSample(SIZE)
            offer_rows(sample, rows, scores)
            samples.save(batch_id, day, shard, part, sample, list(scores))

    table = samples.load(batch_id, day, ["x", "score:1", "score:2", "score:3"], SIZE)

    assert table.num_rows == SIZE
    ids = table.column("x").to_numpy()  # x = id % 7, the id itself from each run's score
    for run_id, factor in ((1, 2.0), (2, 3.0), (3, 5.0)):
        run = of_run(table, run_id, ["x"])
        assert run.num_rows == SIZE, run_id
        np.testing.assert_array_equal((run.column("score").to_numpy() / factor) % 7, ids)
