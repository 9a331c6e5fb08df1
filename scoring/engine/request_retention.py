"""How long the online request log keeps its rows: a day of requests ONLINE_LOG_RETENTION_DAYS,
a deleted model's requests as long as its scores (DELETED_SCORES_RETENTION_DAYS). Both are
removed by a Delta commit of the daily maintenance (scoring.engine.maintenance), which also
compacts, vacuums and checkpoints the table as it does the scores tables.

The log holds every request's features, customers' data: it is kept as long as the online
checks and the Online card read it, not for good. The commit only changes the log: vacuum
deletes the files SCORES_RETENTION_HOURS later, as the scores'.
"""

from collections.abc import Callable
from datetime import date, timedelta

import pyarrow as pa
import pyarrow.compute as pc
from django.conf import settings

from scoring.engine import scores

# Written by scoring.online.request_log, which sits above the engine: the name is known here.
TABLE = "requests"


def remove_old(today: date) -> int:
    """Remove the days logged more than ONLINE_LOG_RETENTION_DAYS before `today`; how many
    files went."""
    cutoff = (today - timedelta(days=settings.ONLINE_LOG_RETENTION_DAYS)).isoformat()
    return remove(lambda files: pc.less(files["partition.dt"], cutoff))


def remove_models(model_ids: list[int]) -> int:
    """Remove every day of these (deleted) models; how many files went."""
    wanted = pa.array(model_ids, pa.int64())
    return remove(lambda files: pc.is_in(pc.cast(files["partition.model_id"], pa.int64()), wanted))


def remove(chosen: Callable[[pa.Table], pa.Array]) -> int:
    """Remove the files `chosen` picks from the table's file list, in one Delta commit."""

    def actions(table) -> list:
        files = pa.table(table.get_add_actions(flatten=True)).select(
            ["path", "size_bytes", "partition.dt", "partition.model_id"]
        )
        return scores.remove_actions(files.filter(chosen(files)))

    return len(scores.transact(actions, name=TABLE))
