"""The scores tables: Delta Lake tables on S3, partitioned by date and model.

`s3://SCORES_BUCKET/scores` holds the live scores, what production reads: one row per
(dt, model_id, entity_id), the champion's and, under a traffic split, the challenger's
share of the entities. `s3://SCORES_BUCKET/scores_shadow` holds the scores of shadow
challengers (a challenger without a split scores every entity beside its champion), for
analysts comparing versions. Both have the columns entity_id, score, model_id,
model_version, run_id, scored_at, role and the partition columns dt and model_id.

A run writes its Parquet files into its partition's folder of its table while it scores
(invisible: not yet in the log), then commits by one Delta transaction that adds them and
removes whatever the (dt, model_id) partition held in the run's role: a reader sees the
run's rows whole or not at all, and a retried run replaces, never adds. Only the log entry
is written at commit time. Spark, Trino, DuckDB and Polars read the tables as they are.

`role` is "champion" (the live version: the model's scores) or "challenger" (a version
scored beside it). It is a plain column, not a partition: a split challenger's rows sit in
the champion's (dt, model_id) folder, so the table's partitioning, and the champion's
paths, stay as they were. Rows written before roles existed have no role (null):
champion's. Every run of a model's day has the day's split (scoring.packages.roles
`day_split`), so the two sides of `scores` never hold an entity twice.
"""

import contextlib
import functools
import json
import logging
import random
import time
import uuid
from collections.abc import Iterator
from datetime import date, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from deltalake import DeltaTable, Field
from deltalake.exceptions import CommitFailedError, TableNotFoundError
from deltalake.transaction import AddAction, RemoveAction
from django.conf import settings
from django.db import connection, transaction

from scoring.engine.part_upload import PartUpload
from scoring.packages import storage

TABLE = "scores"  # the live scores
SHADOW_TABLE = "scores_shadow"  # shadow challengers' scores
TABLES = (TABLE, SHADOW_TABLE)
PARTITIONS = ["dt", "model_id"]
ROLES = ("champion", "challenger")  # the values of `role` (scoring.models.Role)
# The PostgreSQL advisory lock writers of the table's log take (see `commit_lock`).
COMMIT_LOCK_KEY = 7_301_977
# A commit that conflicts with another writer's (see `commit`) is tried this many times.
COMMIT_ATTEMPTS = 5
COMMIT_BACKOFF_SECONDS = 0.2
log = logging.getLogger(__name__)


def table_of(run) -> str:
    """The table a run's rows go to: a challenger scoring every entity beside its champion
    (no split) is a shadow; the champion and a split challenger are live."""
    return SHADOW_TABLE if run.role == "challenger" and run.split_share is None else TABLE


def table_uri(name: str = TABLE) -> str:
    return f"s3://{settings.SCORES_BUCKET}/{name}"


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
            ("role", pa.string()),
        ]
    )


class RunWriter:
    """One run's scores (or one part's of them), written into its partition while it scores.

    The file streams to S3 as row groups, so the worker holds one chunk of scores, not
    the run's; it stays invisible to every reader until `commit` adds it to the log.
    """

    def __init__(self, run, part_index: int = 0, open_sink=None):
        self.run = run
        self.table = table_of(run)
        # Where the file goes, given its key in the bucket: by default SCORES_BUCKET, through
        # a PartUpload (a Spark executor, which has no settings, opens its own).
        self.open_sink = open_sink or (lambda key: PartUpload(f"{settings.SCORES_BUCKET}/{key}"))
        self.partition = {"dt": run.date.isoformat(), "model_id": str(run.deployment_id)}
        self.path = (
            f"dt={self.partition['dt']}/model_id={self.partition['model_id']}/"
            f"run-{run.id}-attempt-{run.attempts}-part-{part_index}-{uuid.uuid4().hex[:8]}.parquet"
        )
        self.sink: PartUpload | None = None
        self.writer = None
        self.rows = 0
        self.low: dict = {}
        self.high: dict = {}
        self.action: dict | None = None  # once closed

    def write(self, entity_ids: pa.Array, scores: pa.Array, scored_at: datetime) -> None:
        part = file_batch(entity_ids, scores, self.run, scored_at)
        if self.writer is None:
            self.sink = self.open_sink(f"{self.table}/{self.path}")
            self.writer = parquet_writer(self.sink, part.schema)
        self.writer.write_batch(part)
        self.rows += part.num_rows
        for name in ("entity_id", "score"):
            low, high = (v.as_py() for v in pc.min_max(part.column(name)).values())
            self.low[name] = low if name not in self.low else min(self.low[name], low)
            self.high[name] = high if name not in self.high else max(self.high[name], high)
        self.low.setdefault("scored_at", scored_at)  # one time per chunk, chunks in order
        self.high["scored_at"] = scored_at

    def close(self) -> dict:
        """Finish the file (once); returns its add action for the commit (JSON-able)."""
        if self.action is None:
            self.action = self.finish()
        return self.action

    def finish(self) -> dict:
        self.writer.close()
        size = self.sink.tell()
        self.sink.close()  # the file appears on S3, still outside the table
        # Full statistics: readers (and delta-rs itself) prune files on them, and a
        # column without them would be taken as all-null.
        constants = {
            "model_version": self.run.version.number,
            "run_id": self.run.id,
            "role": self.run.role,
        }
        low = {**self.low, **constants, "scored_at": delta_time(self.low["scored_at"])}
        high = {**self.high, **constants, "scored_at": delta_time(self.high["scored_at"])}
        return {
            "path": self.path,
            "size": size,
            "partition_values": self.partition,
            "modification_time": int(time.time() * 1000),
            "data_change": True,
            "stats": json.dumps(
                {
                    "numRecords": self.rows,
                    "minValues": low,
                    "maxValues": high,
                    "nullCount": {name: 0 for name in low},
                }
            ),
            "id_type": str(self.writer.schema.field("entity_id").type),
            "table": self.table,
        }

    def abort(self) -> None:
        """The run failed: its file never reaches S3, nor the log (best effort)."""
        if self.sink is not None:
            self.sink.abort()


def parquet_writer(sink, file_schema: pa.Schema) -> pq.ParquetWriter:
    """Dictionaries only for the constant columns: trying them on a million distinct ids
    and scores made writing ten times slower; integer ids are delta-encoded instead."""
    encodings = {}
    if pa.types.is_integer(file_schema.field("entity_id").type):
        encodings["entity_id"] = "DELTA_BINARY_PACKED"
    return pq.ParquetWriter(
        sink,
        file_schema,
        compression="snappy",
        use_dictionary=["model_version", "run_id", "scored_at", "role"],
        column_encoding=encodings,
    )


def delta_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def remove_files(files: list[dict]) -> None:
    """Written files that will never be committed (best effort: unlogged files are never read)."""
    filesystem = storage.arrow_filesystem()
    for written in files:
        with contextlib.suppress(Exception):
            filesystem.delete_file(
                f"{settings.SCORES_BUCKET}/{file_table(written)}/{written['path']}"
            )


def file_table(written: dict) -> str:
    """The table a written file is in (one a unit wrote before `scores_shadow` existed, kept
    in the database for its shard's commit, carries none: the live table's)."""
    return written.get("table", TABLE)


def file_batch(entity_ids: pa.Array, scores: pa.Array, run, scored_at: datetime) -> pa.RecordBatch:
    """Rows of a data file: the partition columns dt and model_id live in its path."""
    rows = len(entity_ids)
    return pa.RecordBatch.from_arrays(
        [
            entity_ids,
            scores,
            pa.array(np.full(rows, run.version.number, dtype=np.int32)),
            pa.array(np.full(rows, run.id, dtype=np.int64)),
            pa.array(
                np.full(rows, np.datetime64(scored_at.replace(tzinfo=None), "us")),
                pa.timestamp("us", tz="UTC"),
            ),
            pa.array([run.role] * rows, pa.string()),
        ],
        names=["entity_id", "score", "model_version", "run_id", "scored_at", "role"],
    )


def partition_predicate(day: date, model_ids: list[int]) -> str:
    ids = ", ".join(str(int(model_id)) for model_id in model_ids)
    return f"dt = '{day.isoformat()}' AND model_id IN ({ids})"


def commit(day: date, kept: list[tuple[int, str]], files: list[dict], name: str = TABLE) -> None:
    """Replace the rows of these (model, role)s on that day in table `name` with the runs'
    written files, in one Delta transaction: each run's rows are replaced whole, or nothing
    changes."""
    if any(file_table(f) != name for f in files):
        raise ValueError(f"a commit to {name} was given files of another table")
    meta = ("id_type", "table")
    adds = [AddAction(**{k: v for k, v in f.items() if k not in meta}) for f in files]
    added = {f["path"] for f in files}

    def actions(table: DeltaTable) -> list:
        removes = replaced_files(table, day, kept)
        return [*adds, *(r for r in removes if r.path not in added)]  # committed already: kept

    transact(actions, schema(pa.type_for_alias(files[0]["id_type"])), name)


def remove_models(model_ids: list[int]) -> int:
    """Remove every partition of these models (deleted ones) from both tables, one Delta
    transaction each; how many files it removed. Only the logs change: a reader's snapshot
    keeps its files until vacuum deletes them, SCORES_RETENTION_HOURS later."""
    every_role = [(model_id, role) for model_id in model_ids for role in ROLES]
    return sum(
        len(transact(lambda table: replaced_files(table, None, every_role), name=name))
        for name in TABLES
    )


def transact(actions_of, table_schema: pa.Schema | None = None, name: str = TABLE) -> list:
    """Commit the actions `actions_of(table)` finds on the table as it is now, and return
    them (a table not made yet is made with `table_schema`, or left alone without one).

    delta-rs takes a commit that read the table before another one removed files as a
    conflict, even when the two touch disjoint partitions (two shards of a batch): such a
    commit is tried again on the table as it is then, a few times.

    The table is opened afresh each time: a commit must see every file its partitions
    hold, and delta-rs 1.6.6 brings a table up to date (and itself after a commit) by
    replaying the log from the last checkpoint, as long as opening it."""
    for attempt in range(COMMIT_ATTEMPTS):
        try:
            with commit_lock():
                table = with_roles(open_table(name)) or (
                    table_schema and create_table(table_schema, name)
                )
                actions = actions_of(table) if table else []
                if actions:
                    table.create_write_transaction(
                        actions,
                        mode="append",
                        schema=table_schema or table.schema(),
                        partition_by=PARTITIONS,
                    )
            return actions
        except CommitFailedError as exc:
            if attempt == COMMIT_ATTEMPTS - 1:
                raise
            log.warning("a commit to the %s table conflicted, again: %s", name, exc)
            time.sleep(COMMIT_BACKOFF_SECONDS * 2**attempt * (1 + random.random()))


def replaced_files(
    table: DeltaTable, day: date | None, kept: list[tuple[int, str]]
) -> list[RemoveAction]:
    """The files of these (model, role)s on that day (every day's with no day) now, to
    remove in a commit.

    Found with Arrow over the table's file list: delta-rs' own partition filter (an
    overwrite's) tests each of a year's 365,000 files against each of 1,000 model ids, 3 s.
    A file's role is its statistics' (each file holds one run's rows); none: champion's."""
    files = pa.table(table.get_add_actions(flatten=True)).select(
        ["path", "size_bytes", "partition.dt", "partition.model_id", "min.role"]
    )
    if day is not None:
        files = files.filter(pc.equal(files["partition.dt"], day.isoformat()))
    keys = pc.binary_join_element_wise(
        pc.cast(files["partition.model_id"], pa.string()),
        pc.fill_null(files["min.role"], "champion"),
        "/",
    )
    wanted = pa.array([f"{int(model_id)}/{role}" for model_id, role in kept], pa.string())
    return remove_actions(files.filter(pc.is_in(keys, value_set=wanted)))


def remove_actions(held: pa.Table) -> list[RemoveAction]:
    """Removals of these files (rows of `get_add_actions(flatten=True)`) for a commit."""
    now = int(time.time() * 1000)
    return [
        RemoveAction(
            path=path,
            data_change=True,
            deletion_timestamp=now,  # vacuum keeps the file SCORES_RETENTION_HOURS from now
            size=size,
            partition_values={"dt": dt, "model_id": str(model_id)},
        )
        for path, size, dt, model_id in zip(
            held["path"].to_pylist(),
            held["size_bytes"].to_pylist(),
            held["partition.dt"].to_pylist(),
            held["partition.model_id"].to_pylist(),
            strict=True,
        )
    ]


def with_roles(table: DeltaTable | None) -> DeltaTable | None:
    """The table with its `role` column: a table made before roles existed gains it once
    (a change of the log only; its files' rows read it as null, the champion's)."""
    if table is None or has_roles(table):
        return table
    try:
        table.alter.add_columns([Field("role", "string", nullable=True)])
    except Exception:  # another writer may have added it meanwhile: looked at again below
        log.warning("adding the role column to the scores table failed", exc_info=True)
    table = DeltaTable(table.table_uri, storage_options=storage_options())
    if not has_roles(table):  # never commit rows whose role the table would drop
        raise RuntimeError("the scores table has no role column, and it could not be added")
    return table


def has_roles(table: DeltaTable) -> bool:
    return "role" in {field.name for field in table.schema().fields}


def create_table(table_schema: pa.Schema, name: str = TABLE) -> DeltaTable:
    DeltaTable.create(
        table_uri(name),
        table_schema,
        partition_by=PARTITIONS,
        mode="ignore",  # another worker may have just made it
        storage_options=storage_options(),
    )
    return open_table(name)


@contextlib.contextmanager
def commit_lock(exclusive: bool = False):
    """Held by every writer of the log, in the database (a PostgreSQL advisory lock).

    With conditional writes, commits share it: two shards' commits both land (one tried
    again). Compaction holds it alone: delta-rs 1.6.6 lets a commit that removes files a
    compaction has just rewritten land, which would leave the old rows beside the run's
    (tests/test_scores_table.py). Without conditional writes, every writer holds it alone."""
    exclusive = exclusive or not settings.S3_CONDITIONAL_PUT
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                if exclusive:
                    cursor.execute("SELECT pg_advisory_xact_lock(%s)", [COMMIT_LOCK_KEY])
                else:
                    cursor.execute("SELECT pg_advisory_xact_lock_shared(%s)", [COMMIT_LOCK_KEY])
        yield  # on SQLite the IMMEDIATE transaction itself is the lock


def open_table(name: str = TABLE) -> DeltaTable | None:
    try:
        return DeltaTable(table_uri(name), storage_options=storage_options())
    except TableNotFoundError:
        return None


def run_scores(run, columns=("entity_id", "score"), table=None) -> Iterator[pa.RecordBatch]:
    """Stream a committed run's scores, from its table (empty if its partition holds
    another run's)."""
    table = table or open_table(table_of(run))
    if table is None:
        return
    dataset = table.to_pyarrow_dataset(
        file_pruning_predicate=partition_predicate(run.date, [run.deployment_id])
    )
    yield from dataset.to_batches(columns=list(columns), filter=ds.field("run_id") == run.id)


def score_reader(columns=("score",)):
    """A reader of runs' score columns from one view of each table, for the quality checks
    and the comparisons.

    A table is opened at its first read: a slice that committed nothing reads nothing
    (S3 may be why it committed nothing)."""
    table = functools.cache(open_table)
    return lambda run: run_scores(run, columns=columns, table=table(table_of(run)))
