"""The request log's queue: an answer never waits for it, and when its writer falls behind
(S3 slow) the rows beyond its bound are dropped and counted, the rest written once S3
answers again, into the real Delta table."""

import threading
from datetime import UTC, datetime

import polars as pl
import pyarrow as pa
import pytest

from scoring.engine import scores
from scoring.online import request_log
from tests import flows

pytestmark = pytest.mark.django_db(transaction=True)


def entry(request_id: str, rows: int) -> request_log.Entry:
    return request_log.Entry(
        time=datetime.now(UTC),
        request_id=request_id,
        model_id=7,
        version=1,
        role="champion",
        features=pa.table({"age": [float(i) for i in range(rows)], "region": ["north"] * rows}),
        entity_ids=list(range(rows)),
        scores=[0.5] * rows,
        latency_ms=1.5,
        status=200,
    )


def test_a_slow_writer_drops_the_rows_beyond_the_bound_counts_them_and_writes_the_rest(table):
    s3_answers = threading.Event()

    def slow_s3(rows):  # the real append, once "S3" answers
        s3_answers.wait(30)
        request_log.append(rows)

    log = request_log.RequestLog(max_rows=10, flush_seconds=0.1, write=slow_s3).start()
    try:
        for number in range(5):
            log.put(entry(f"r{number}", 3))  # returns at once, S3 or not
        assert (log.queued_rows, log.dropped) == (9, 6)
        s3_answers.set()
        flows.wait_until(lambda: log.written == 9, "the queued rows written", timeout=30)
        log.put(entry("after", 2))
    finally:
        log.stop()
    assert log.written == 11 and log.dropped == 6

    uri = scores.table_uri(request_log.TABLE)
    frame = pl.read_delta(uri, storage_options=scores.storage_options())
    assert sorted(set(frame["request_id"])) == ["after", "r0", "r1", "r2"]
    assert frame.filter(pl.col("request_id") == "r1")["entity_id"].to_list() == ["0", "1", "2"]
    assert frame["features"][0] == '{"age":0.0,"region":"north"}'
    assert set(frame["dt"]) == {datetime.now(UTC).date().isoformat()}


def test_a_log_keeping_the_table_open_appends_after_another_writers_commits(table):
    """The serving process keeps the table between appends; another serving process (or
    the maintenance) commits in between, and no row is lost or doubled."""
    ours, theirs = request_log.Appender(), request_log.Appender()
    for number, appender in enumerate([ours, theirs, ours, theirs, ours]):
        appender(request_log.rows_of([entry(f"r{number}", 2)]))

    uri = scores.table_uri(request_log.TABLE)
    frame = pl.read_delta(uri, storage_options=scores.storage_options())
    assert sorted(frame["request_id"]) == sorted(f"r{n}" for n in range(5) for _ in range(2))
