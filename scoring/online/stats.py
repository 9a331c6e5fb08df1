"""A model's online traffic of the last 24 hours, read from the request log (the `requests`
Delta table): what the model page's Online card shows.

A request is counted once however many rows it carried, and however many versions scored
them (a shadow challenger's rows share the request's id). Its status is the best of its
rows': a shadow challenger that failed beside a good answer is not the caller's error.
"""

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from scoring.engine import scores
from scoring.online import request_log

WINDOW = timedelta(hours=24)
COLUMNS = ["request_id", "latency_ms", "status"]


def last_day(deployment_id: int, now: datetime | None = None) -> dict:
    """Requests, requests a second, p50 and p99 latency (ms) and errors of the 24 hours
    before `now`; no requests (and no latency) when the log has none or does not exist yet."""
    now = now or datetime.now(UTC)
    since = now - WINDOW
    requests = per_request(logged_rows(deployment_id, since))
    latencies = requests.column("latency_ms").to_numpy()
    p50, p99 = np.percentile(latencies, [50, 99]) if len(latencies) else (None, None)
    return {
        "since": since,
        "requests": requests.num_rows,
        "per_second": requests.num_rows / WINDOW.total_seconds(),
        "p50_ms": None if p50 is None else float(p50),
        "p99_ms": None if p99 is None else float(p99),
        "errors": int(np.count_nonzero(requests.column("status").to_numpy() >= 400)),
    }


def logged_rows(deployment_id: int, since: datetime) -> pa.Table:
    """The model's log rows since `since`: only the partitions of its id from that day on
    are opened."""
    table = scores.open_table(request_log.TABLE)
    if table is None:  # nothing was ever served online
        return request_log.SCHEMA.empty_table().select(COLUMNS)
    dataset = table.to_pyarrow_dataset(
        file_pruning_predicate=(
            f"dt >= '{since.date().isoformat()}' AND model_id = {int(deployment_id)}"
        )
    )
    return dataset.to_table(columns=COLUMNS, filter=ds.field("time") >= pa.scalar(since))


def per_request(rows: pa.Table) -> pa.Table:
    """One row a request: its latency and the best status of its rows."""
    grouped = rows.group_by("request_id").aggregate([("latency_ms", "max"), ("status", "min")])
    return grouped.rename_columns(
        {"latency_ms_max": "latency_ms", "status_min": "status", "request_id": "request_id"}
    )
