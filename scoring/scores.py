"""The unified scores table: one Delta Lake table on S3, partitioned by date and model.

`s3://SCORES_BUCKET/scores` with columns entity_id, score, model_id,
model_version, run_id, scored_at and the partition columns dt and model_id.
A run commits by replacing its (dt, model_id) partition in one Delta
transaction (a predicate overwrite): a reader sees the partition whole or not at
all, and a retried run replaces, never adds. Spark, Trino, DuckDB and Polars
read it as it is.
"""

import contextlib
from collections.abc import Iterator
from datetime import date, datetime

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
from deltalake import DeltaTable, WriterProperties, write_deltalake
from deltalake.exceptions import TableNotFoundError
from django.conf import settings
from django.db import connection, transaction

PARTITIONS = ["dt", "model_id"]
# Scores are random doubles that barely compress: the fastest codec loses little.
WRITER = WriterProperties(compression="SNAPPY")
# Taken by a PostgreSQL advisory lock when the S3 server has no conditional writes.
COMMIT_LOCK_KEY = 7_301_977


def table_uri() -> str:
    return f"s3://{settings.SCORES_BUCKET}/scores"


def storage_options() -> dict[str, str]:
    options = {
        "AWS_ENDPOINT_URL": settings.S3_ENDPOINT_URL,
        "AWS_ACCESS_KEY_ID": settings.S3_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": settings.S3_SECRET_KEY,
        "AWS_REGION": settings.S3_REGION,
        "AWS_ALLOW_HTTP": "true",
    }
    if settings.S3_CONDITIONAL_PUT:
        # Concurrent commits from several workers: the log entry is written with
        # If-None-Match, so two writers of one table version cannot both win.
        options["conditional_put"] = "etag"
    else:
        options["AWS_S3_ALLOW_UNSAFE_RENAME"] = "true"
    return options


def schema(id_type: pa.DataType) -> pa.Schema:
    return pa.schema(
        [
            ("entity_id", id_type),
            ("score", pa.float64()),
            ("model_id", pa.int64()),
            ("model_version", pa.int32()),
            ("run_id", pa.int64()),
            ("scored_at", pa.timestamp("us", tz="UTC")),
            ("dt", pa.string()),
        ]
    )


def score_batch(entity_ids: pa.Array, scores: pa.Array, run, scored_at: datetime) -> pa.RecordBatch:
    """One part of a run's output, in the table's schema (constant columns built by numpy)."""
    rows = len(entity_ids)
    return pa.RecordBatch.from_arrays(
        [
            entity_ids,
            scores,
            pa.array(np.full(rows, run.deployment_id, dtype=np.int64)),
            pa.array(np.full(rows, run.version.number, dtype=np.int32)),
            pa.array(np.full(rows, run.id, dtype=np.int64)),
            pa.array(
                np.full(rows, np.datetime64(scored_at.replace(tzinfo=None), "us")),
                pa.timestamp("us", tz="UTC"),
            ),
            pa.DictionaryArray.from_arrays(
                np.zeros(rows, dtype=np.int32), [run.date.isoformat()]
            ).cast(pa.string()),
        ],
        schema=schema(entity_ids.type),
    )


def partition_predicate(day: date, model_ids: list[int]) -> str:
    ids = ", ".join(str(int(model_id)) for model_id in model_ids)
    return f"dt = '{day.isoformat()}' AND model_id IN ({ids})"


def commit(day: date, model_ids: list[int], parts: pa.RecordBatchReader) -> None:
    """Replace the (day, model) partitions of these runs with `parts`, streamed, in one
    Delta transaction: each run's partition is replaced whole, or nothing changes."""
    with commit_lock():
        write_deltalake(
            table_uri(),
            parts,
            mode="overwrite",
            predicate=partition_predicate(day, model_ids),
            partition_by=PARTITIONS,
            storage_options=storage_options(),
            writer_properties=WRITER,
        )


@contextlib.contextmanager
def commit_lock():
    if settings.S3_CONDITIONAL_PUT:
        yield
        return
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [COMMIT_LOCK_KEY])
        yield  # on SQLite the IMMEDIATE transaction itself is the lock


def run_scores(run, columns=("entity_id", "score")) -> Iterator[pa.RecordBatch]:
    """Stream a committed run's scores (empty if its partition holds another run's)."""
    try:
        table = DeltaTable(table_uri(), storage_options=storage_options())
    except TableNotFoundError:
        return
    dataset = table.to_pyarrow_dataset(
        file_pruning_predicate=partition_predicate(run.date, [run.deployment_id])
    )
    yield from dataset.to_batches(columns=list(columns), filter=ds.field("run_id") == run.id)


# --- staging: the parts of a slice scored by several workers -------------------


def staging_prefix(batch_id: int, day: date) -> str:
    return f"_staging/batch-{batch_id}/{day.isoformat()}/"


def stage(batch_id: int, day: date, run_id: int, part_index: int, path) -> None:
    """Keep one part's scores of one run (an Arrow stream file) until the slice commits."""
    from scoring import storage

    key = f"{staging_prefix(batch_id, day)}run-{run_id}/part-{part_index:05d}.arrow"
    storage.client().upload_file(str(path), settings.SCORES_BUCKET, key)


def staged(batch_id: int, day: date, run_id: int) -> Iterator[pa.RecordBatch]:
    """A run's staged parts, in order, streamed from S3."""
    from scoring import storage

    s3 = storage.client()
    prefix = f"{staging_prefix(batch_id, day)}run-{run_id}/"
    listing = s3.list_objects_v2(Bucket=settings.SCORES_BUCKET, Prefix=prefix)
    for item in sorted(listing.get("Contents", []), key=lambda item: item["Key"]):
        body = s3.get_object(Bucket=settings.SCORES_BUCKET, Key=item["Key"])["Body"]
        yield from pa.ipc.open_stream(pa.PythonFile(body, mode="r"))


def drop_staging(batch_id: int, day: date) -> None:
    from scoring import storage

    s3 = storage.client()
    listing = s3.list_objects_v2(
        Bucket=settings.SCORES_BUCKET, Prefix=staging_prefix(batch_id, day)
    )
    keys = [{"Key": item["Key"]} for item in listing.get("Contents", [])]
    if keys:
        s3.delete_objects(Bucket=settings.SCORES_BUCKET, Delete={"Objects": keys, "Quiet": True})
