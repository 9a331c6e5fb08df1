"""Keeping the scores tables healthy as runs accumulate (a beat task, daily by default).

A fleet adds 365,000 (dt, model_id) partitions a year, and each commit a log entry:
- retention: the partitions of models deleted more than DELETED_SCORES_RETENTION_DAYS ago
  are removed (scoring.engine.retention), first, so compaction never rewrites them;
- shadow challengers' rows left in `scores` by versions before `scores_shadow` existed
  move there (scoring.engine.shadow_rows);
- the slice copies that a batch's units shared (scoring.engine.slice_copies), of batches
  closed by tick after a worker died (a batch its units close removes its own);
- the online request log's days past ONLINE_LOG_RETENTION_DAYS (scoring.engine.
  request_retention);
and for each table, `scores`, `scores_shadow` and `requests` (the request log, which
a serving process appends a small file to every few seconds):
- compaction: a run scored in parts leaves a file per part in its partition; partitions
  of days before today with more than one file are rewritten as one (delta-rs' optimize,
  a commit of its own that changes no data, one per day);
- vacuum: files no version of the table references any more (a replaced run's, the
  small files compaction rewrote, files of runs that died before committing) are deleted
  once older than SCORES_RETENTION_HOURS; until then a reader holding an older snapshot,
  or travelling back in time, still finds them;
- a checkpoint of the latest version, so a reader or a commit opens the table from one
  Parquet file instead of replaying every log entry since delta-rs' last one (it writes
  one itself every 100 commits, `delta.checkpointInterval`);
- the clean-up of log entries older than the table's log retention (30 days,
  `delta.logRetentionDuration`) that a checkpoint makes useless.

A run must not commit a partition while compaction rewrites it: delta-rs 1.6.6 does not
take a commit that removes the files a compaction has just rewritten as a conflict, and
the old rows would come back beside the run's. Compaction holds the commit lock alone
(`scores.commit_lock`), one day at a time, so commits wait for it a few seconds at most.
"""

import json
import logging
from dataclasses import dataclass, field
from datetime import date

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable
from deltalake.exceptions import CommitFailedError
from django.conf import settings
from django.utils import timezone

from scoring.engine import request_retention, retention, scores, shadow_rows, slice_copies

log = logging.getLogger(__name__)


@dataclass
class TableReport:
    """What one maintenance did to one table."""

    days_compacted: list[str] = field(default_factory=list)
    files_compacted: int = 0
    files_written: int = 0
    bytes_compacted: int = 0
    days_skipped: list[str] = field(default_factory=list)
    files_vacuumed: int = 0
    bytes_vacuumed: int = 0
    checkpoint_version: int | None = None

    def summary(self) -> str:
        return (
            f"compacted {self.files_compacted} files ({self.bytes_compacted:,} B) into "
            f"{self.files_written} in {len(self.days_compacted)} days"
            + (f", skipped {', '.join(self.days_skipped)}" if self.days_skipped else "")
            + f"; vacuumed {self.files_vacuumed} files ({self.bytes_vacuumed:,} B) older than "
            f"{settings.SCORES_RETENTION_HOURS} h; checkpoint at version {self.checkpoint_version}"
        )


@dataclass
class Report:
    """What one maintenance did, for its log line and the management command."""

    tables: dict[str, TableReport] = field(default_factory=dict)
    deleted_models_removed: list[int] = field(default_factory=list)
    shadow_files_moved: int = 0
    slice_copies_removed: int = 0
    old_request_files_removed: int = 0

    def summary(self) -> str:
        return "; ".join(
            [
                *(f"{name}: {report.summary()}" for name, report in self.tables.items()),
                f"removed the scores of {len(self.deleted_models_removed)} models deleted more "
                f"than {settings.DELETED_SCORES_RETENTION_DAYS} days ago",
                f"moved {self.shadow_files_moved} files of shadow challengers to "
                f"{scores.SHADOW_TABLE}",
                f"removed the slice copies of {self.slice_copies_removed} closed batches",
                f"removed {self.old_request_files_removed} files of requests logged more "
                f"than {settings.ONLINE_LOG_RETENTION_DAYS} days ago",
            ]
        )


def maintain(today: date | None = None) -> Report:
    """Remove deleted models' expired scores and requests, and old requests, move shadow rows
    out of the live table, then compact, vacuum, checkpoint and clean up the log of each
    table (one not made yet is left)."""
    today = today or timezone.localdate()
    report = Report(
        deleted_models_removed=retention.remove_expired(),
        old_request_files_removed=request_retention.remove_old(today),
        shadow_files_moved=shadow_rows.move(),
        slice_copies_removed=slice_copies.sweep(),
    )
    for name in (*scores.TABLES, request_retention.TABLE):
        table = scores.open_table(name)
        if table is not None:
            report.tables[name] = maintain_table(table, today)
    log.info("scores tables maintained: %s", report.summary())
    return report


def maintain_table(table: DeltaTable, today: date) -> TableReport:
    report = TableReport()
    for day in days_to_compact(table, today):
        compact(table, day, report)
    vacuum(table, report)
    table.update_incremental()
    table.create_checkpoint()
    report.checkpoint_version = table.version()
    table.cleanup_metadata()
    return report


def days_to_compact(table: DeltaTable, today: date) -> list[date]:
    """Days before today that hold a partition of more than one file."""
    files = pa.table(table.get_add_actions(flatten=True)).select(
        ["partition.dt", "partition.model_id"]
    )
    files = files.filter(pc.less(files["partition.dt"], today.isoformat()))
    counts = files.group_by(["partition.dt", "partition.model_id"]).aggregate([([], "count_all")])
    several = counts.filter(pc.greater(counts["count_all"], 1))
    return sorted(date.fromisoformat(day) for day in set(several["partition.dt"].to_pylist()))


def compact(table: DeltaTable, day: date, report: TableReport) -> None:
    """Rewrite the day's partitions of several files as one file each (one commit)."""
    try:
        with scores.commit_lock(exclusive=True):  # no run commits meanwhile
            table.update_incremental()
            metrics = table.optimize.compact(partition_filters=[("dt", "=", day.isoformat())])
    except CommitFailedError as exc:  # another maintenance compacted the day meanwhile
        log.warning("compaction of %s left for the next maintenance: %s", day, exc)
        report.days_skipped.append(day.isoformat())
        return
    report.days_compacted.append(day.isoformat())
    report.files_compacted += metrics["numFilesRemoved"]
    report.files_written += metrics["numFilesAdded"]
    report.bytes_compacted += json.loads(metrics["filesRemoved"])["totalSize"]  # JSON text


def vacuum(table: DeltaTable, report: TableReport) -> None:
    """Delete the files no version references, older than the retention (the whole table
    folder is listed: files of runs that died before committing are found too)."""
    with scores.commit_lock():
        removed = table.vacuum(
            retention_hours=settings.SCORES_RETENTION_HOURS,
            dry_run=False,
            enforce_retention_duration=False,  # the setting, not the table's property, rules
            full=True,
        )
    report.files_vacuumed = len(removed)
    if removed:
        table.update_incremental()
        started = next(entry for entry in table.history(2) if entry["operation"] == "VACUUM START")
        report.bytes_vacuumed = int(started["operationMetrics"]["sizeOfDataToDelete"])
