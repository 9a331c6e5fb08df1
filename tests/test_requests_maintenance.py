"""The online request log in the daily maintenance: a serving process appends a small file
every few seconds, so past days are compacted, and old days and deleted models' requests go."""

import uuid
from datetime import UTC, date, datetime, time, timedelta

import polars as pl
import pyarrow as pa
import pytest
from django.utils import timezone

from scoring.engine import maintenance, request_retention, retention, scores
from scoring.models import DeletedDeployment
from scoring.online import request_log

pytestmark = pytest.mark.django_db(transaction=True)
TODAY = date(2026, 11, 10)


def flushes(model_id: int, day: date, count: int) -> None:
    """`count` flushes of the serving process's log, of two requests each."""
    for flush in range(count):
        entries = [
            request_log.Entry(
                time=datetime.combine(day, time(12, flush), UTC),
                request_id=uuid.uuid4().hex,
                model_id=model_id,
                version=1,
                role="champion",
                features=pa.table({"age": [30.0 + flush], "region": ["north"]}),
                entity_ids=[f"{flush}-{n}"],
                scores=[0.1 * (flush % 10)],
                latency_ms=1.1,
                status=200,
            )
            for n in range(2)
        ]
        request_log.append(request_log.rows_of(entries))


def logged() -> pl.DataFrame:
    uri = scores.table_uri(request_retention.TABLE)
    frame = pl.read_delta(uri, storage_options=scores.storage_options())
    return frame.sort("dt", "model_id", "request_id")


def files_per_partition() -> dict[tuple[str, int], int]:
    files = scores.open_table(request_retention.TABLE).get_add_actions(flatten=True)
    found = pa.table(files).select(["partition.dt", "partition.model_id"]).to_pylist()
    counts: dict = {}
    for row in found:
        key = (row["partition.dt"], row["partition.model_id"])
        counts[key] = counts.get(key, 0) + 1
    return counts


def test_past_days_of_the_request_log_are_compacted_and_every_request_kept(table):
    for back in (2, 1, 0):
        for model_id in (1, 2):
            flushes(model_id, TODAY - timedelta(days=back), 6)
    before = logged()

    report = maintenance.maintain(TODAY).tables[request_retention.TABLE]

    assert report.days_compacted == [(TODAY - timedelta(days=b)).isoformat() for b in (2, 1)]
    assert (report.files_compacted, report.files_written) == (24, 4)
    counts = files_per_partition()
    assert counts == {
        **{((TODAY - timedelta(days=b)).isoformat(), m): 1 for b in (2, 1) for m in (1, 2)},
        (TODAY.isoformat(), 1): 6,  # today's: still being written
        (TODAY.isoformat(), 2): 6,
    }
    assert logged().equals(before)
    assert report.checkpoint_version is not None


def test_days_past_the_retention_and_a_deleted_models_requests_leave_the_log(table, settings):
    settings.ONLINE_LOG_RETENTION_DAYS = 2
    settings.DELETED_SCORES_RETENTION_DAYS = 30
    for back in (3, 2, 1):
        for model_id in (1, 2):
            flushes(model_id, TODAY - timedelta(days=back), 2)
    DeletedDeployment.objects.create(
        deployment_id=2, name="alice/gone", deleted_at=timezone.now() - timedelta(days=31)
    )

    report = maintenance.maintain(TODAY)

    assert report.deleted_models_removed == [2]
    assert report.old_request_files_removed == 2  # the day of 3 days ago, model 1's
    kept = logged().select("dt", "model_id").unique().sort("dt", "model_id").rows()
    assert kept == [((TODAY - timedelta(days=b)).isoformat(), 1) for b in (2, 1)]
    assert "removed 2 files of requests logged more than 2 days ago" in report.summary()
    assert retention.remove_expired() == []  # already marked
