"""The request log: every row an online model answers (or fails), in the Delta table
`s3://SCORES_BUCKET/requests` beside the scores, partitioned by dt and model_id.

An answer never waits for the log: the serving process puts each request's rows on a
bounded queue (`RequestLog.put`, a list append) and a thread of its own makes them into
log rows a few at a time and writes them every ONLINE_LOG_FLUSH_SECONDS, one transaction
a flush. When the writer falls behind (S3 slow
or down), the queue stops at ONLINE_LOG_QUEUE_ROWS and the rows beyond are dropped and
counted (`dropped`), which the status page shows; a failed append is tried again with the
next flush, its rows kept while the queue has room.

A row: time (when the request came), request_id, model_id, version (the version number
that scored it), role (champion or challenger; a shadow challenger's rows are logged, never
answered), entity_id (as text; null when the row carried none), features (the row's
features as a JSON object), score (null on error), latency_ms (the request's time in the
server, from its arrival to its answer), status (the HTTP status of the answer) and error.
"""

import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from scoring.engine import request_retention, scores

TABLE = request_retention.TABLE
PARTITIONS = ["dt", "model_id"]
SCHEMA = pa.schema(
    [
        ("time", pa.timestamp("us", tz="UTC")),
        ("request_id", pa.string()),
        ("model_id", pa.int64()),
        ("version", pa.int32()),
        ("role", pa.string()),
        ("entity_id", pa.string()),
        ("features", pa.string()),
        ("score", pa.float64()),
        ("latency_ms", pa.float64()),
        ("status", pa.int32()),
        ("error", pa.string()),
        ("dt", pa.string()),
    ]
)
log = logging.getLogger(__name__)


@dataclass
class Entry:
    """One request's rows as the server had them; made into log rows by the writer."""

    time: datetime
    request_id: str
    model_id: int
    version: int
    role: str
    features: pa.Table | None  # the rows' features, in the package's order; None: unread
    entity_ids: list | None
    scores: list[float] | None  # None: the request failed
    latency_ms: float
    status: int
    error: str | None = None

    @property
    def rows(self) -> int:
        """Log rows: one a row, or one for a request whose rows could not be read."""
        return 1 if self.features is None else self.features.num_rows


def rows_of(entries: list[Entry]) -> pa.Table:
    """The log rows of these entries, in SCHEMA, built column by column in Arrow and Polars,
    not row by row: each run of entries of one schema (one model version) has its features
    made one table, encoded to JSON at once."""
    counts = [entry.rows for entry in entries]

    def repeated(values, kind: pa.DataType) -> pa.Array:
        return pa.array(np.repeat(np.array(values, dtype=object), counts), kind)

    entity_ids, all_scores = [], []
    for entry, count in zip(entries, counts, strict=True):
        entity_ids += [None if i is None else str(i) for i in entry.entity_ids or [None] * count]
        all_scores += list(entry.scores) if entry.scores is not None else [None] * count
    features = []
    for _, run in itertools.groupby(entries, key=lambda entry: schema_of(entry.features)):
        run = list(run)
        table = None
        if run[0].features is not None:
            table = pa.concat_tables([entry.features for entry in run]).unify_dictionaries()
            table = table.combine_chunks()  # one chunk: Polars reads it at once
        features.append((sum(entry.rows for entry in run), table))
    times = [entry.time for entry in entries]
    columns = {
        "time": repeated(times, SCHEMA.field("time").type),
        "request_id": repeated([entry.request_id for entry in entries], pa.string()),
        "model_id": repeated([entry.model_id for entry in entries], pa.int64()),
        "version": repeated([entry.version for entry in entries], pa.int32()),
        "role": repeated([entry.role for entry in entries], pa.string()),
        "entity_id": pa.array(entity_ids, pa.string()),
        "features": features_json(features),
        "score": pa.array(all_scores, pa.float64()),
        "latency_ms": repeated([entry.latency_ms for entry in entries], pa.float64()),
        "status": repeated([entry.status for entry in entries], pa.int32()),
        "error": repeated([entry.error for entry in entries], pa.string()),
        "dt": repeated([moment.date().isoformat() for moment in times], pa.string()),
    }
    return pa.table(columns, schema=SCHEMA)


def features_json(features: list[tuple[int, pa.Table | None]]) -> pa.ChunkedArray:
    """Each row's features as a JSON object, encoded by Polars a table at a time."""
    chunks = []
    for count, table in features:
        if table is None:
            chunks.append(pa.nulls(count, pa.string()))
            continue
        encoded = pl.from_arrow(table).select(pl.struct(pl.all()).struct.json_encode())
        chunks.append(encoded.to_series().to_arrow().cast(pa.string()))
    return pa.chunked_array(chunks, pa.string())


def schema_of(features: pa.Table | None) -> pa.Schema | None:
    return None if features is None else features.schema


def append(rows: pa.Table) -> None:
    """Add rows to the table (made at the first append), as one Delta transaction."""
    Appender()(rows)


class Appender:
    """Appends to the table, keeping its state from one append to the next and reading only
    the commits made since: opened anew, a table reads its whole log at every append."""

    def __init__(self):
        self.table: DeltaTable | None = None

    def __call__(self, rows: pa.Table) -> None:
        try:
            with scores.commit_lock():
                if self.table is None:
                    self.table = scores.open_table(TABLE)
                else:
                    self.table.update_incremental()
                write_deltalake(
                    self.table or scores.table_uri(TABLE),
                    rows,
                    mode="append",
                    partition_by=PARTITIONS,
                    storage_options=None if self.table else scores.storage_options(),
                )
        except Exception:
            self.table = None  # whatever went wrong, the next append opens the table anew
            raise


class RequestLog:
    """The serving process's queue of rows to log, and the thread that writes them.

    The thread makes the rows queued into log rows every ENCODE_SECONDS, a few requests at
    a time, and writes what it made every `flush_seconds`: encoding a flush's thousands of
    requests at once held the interpreter ~0.2 s, and every answer of that moment waited."""

    ENCODE_SECONDS = 0.25

    def __init__(self, max_rows: int, flush_seconds: float, write=None):
        self.max_rows = max_rows
        self.flush_seconds = flush_seconds
        self.write = write or Appender()  # given a table of log rows
        self.entries: deque[Entry] = deque()
        self.encoded: list[pa.Table] = []  # log rows made, not yet written
        self.queued_rows = 0  # of both
        self.dropped = 0  # rows never logged: the queue was full
        self.written = 0
        self.last_error: str | None = None
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="request-log", daemon=True)

    def start(self) -> "RequestLog":
        self.thread.start()
        return self

    def put(self, entry: Entry) -> None:
        """Queue a request's rows; never blocks. Rows beyond the bound are dropped, counted."""
        with self.lock:
            if self.queued_rows + entry.rows > self.max_rows:
                self.dropped += entry.rows
                return
            self.entries.append(entry)
            self.queued_rows += entry.rows

    def run(self) -> None:
        flushed_at = time.monotonic()
        while not self.stopping.wait(self.ENCODE_SECONDS):
            self.encode()
            if time.monotonic() - flushed_at >= self.flush_seconds:
                self.flush()
                flushed_at = time.monotonic()
        self.encode()
        self.flush()

    def encode(self) -> None:
        with self.lock:
            entries, self.entries = list(self.entries), deque()
        if not entries:
            return
        try:
            self.encoded.append(rows_of(entries))
        except Exception as exc:  # a row the log cannot hold must not stop the log
            log.exception("%d request rows could not be logged", len(entries))
            self.last_error = f"{type(exc).__name__}: {exc}"
            lost = sum(entry.rows for entry in entries)
            with self.lock:
                self.queued_rows -= lost
                self.dropped += lost

    def flush(self) -> None:
        if not self.encoded:
            return
        rows = pa.concat_tables(self.encoded).combine_chunks()
        try:
            self.write(rows)
        except Exception as exc:  # S3 or the database down: kept for the next flush
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("the request log could not be written: %s", self.last_error)
            self.encoded = [rows]
            return
        self.encoded = []
        with self.lock:
            self.queued_rows -= rows.num_rows
        self.written += rows.num_rows
        self.last_error = None

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=self.flush_seconds + 30)


def now() -> datetime:
    return datetime.now(UTC)


def elapsed_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000
