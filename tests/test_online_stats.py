"""The last 24 hours of a model's online traffic (scoring.online.stats), read back from
request log rows appended to a test's own `requests` Delta table on the real S3 server."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest

from scoring.online import request_log, stats
from scoring.online.request_log import Entry

pytestmark = pytest.mark.django_db(transaction=True)  # the table's commit lock

NOW = datetime(2026, 3, 10, 9, 30, tzinfo=UTC)
MODEL = 41


def entry(
    request_id: str,
    latency_ms: float,
    status: int = 200,
    *,
    ago: timedelta = timedelta(hours=1),
    model_id: int = MODEL,
    role: str = "champion",
    rows: int = 1,
) -> Entry:
    failed = status >= 400
    return Entry(
        time=NOW - ago,
        request_id=request_id,
        model_id=model_id,
        version=1,
        role=role,
        features=pa.table({"age": [40.0] * rows, "region": ["north"] * rows}),
        entity_ids=[f"c{i}" for i in range(rows)],
        scores=None if failed else [0.5] * rows,
        latency_ms=latency_ms,
        status=status,
        error="age: not a number" if failed else None,
    )


def log(entries: list[Entry]) -> None:
    request_log.append(request_log.rows_of(entries))


def test_no_table_means_no_requests(table):
    figures = stats.last_day(MODEL, now=NOW)

    assert figures["requests"] == figures["errors"] == 0
    assert figures["per_second"] == 0
    assert (figures["p50_ms"], figures["p99_ms"]) == (None, None)


def test_it_counts_requests_a_second_latency_and_errors_of_the_last_day(table):
    latencies = [float(ms) for ms in range(1, 101)]
    log([entry(f"r{i}", ms, ago=timedelta(minutes=i)) for i, ms in enumerate(latencies)])
    log([entry("bad-1", 0.4, 422), entry("bad-2", 0.6, 413)])

    figures = stats.last_day(MODEL, now=NOW)

    assert figures["requests"] == 102
    assert figures["per_second"] == pytest.approx(102 / 86_400)
    every = [*latencies, 0.4, 0.6]
    assert figures["p50_ms"] == pytest.approx(np.percentile(every, 50))
    assert figures["p99_ms"] == pytest.approx(np.percentile(every, 99))
    assert figures["errors"] == 2
    assert figures["since"] == NOW - timedelta(hours=24)


def test_rows_older_than_24_hours_and_other_models_rows_are_left_out(table):
    log(
        [
            entry("today", 2.0),
            # Yesterday's partition holds rows of both sides of the window.
            entry("inside", 3.0, ago=timedelta(hours=23, minutes=59)),
            entry("outside", 500.0, 500, ago=timedelta(hours=24, minutes=1)),
            entry("two-days-ago", 500.0, 500, ago=timedelta(days=2)),
            entry("another-model", 500.0, 500, model_id=MODEL + 1),
        ]
    )

    figures = stats.last_day(MODEL, now=NOW)

    assert (figures["requests"], figures["errors"]) == (2, 0)
    assert figures["p99_ms"] == pytest.approx(np.percentile([2.0, 3.0], 99))


def test_a_request_of_many_rows_and_its_shadow_challengers_rows_count_once(table):
    """A shadow challenger that failed beside a good answer is not the caller's error."""
    log(
        [
            entry("batch", 8.0, rows=50),
            entry("batch", 8.0, 500, role="challenger", rows=50),
        ]
    )

    figures = stats.last_day(MODEL, now=NOW)

    assert (figures["requests"], figures["errors"], figures["p50_ms"]) == (1, 0, 8.0)
