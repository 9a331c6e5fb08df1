"""What a cluster's jobs do to the catalog tables the Spark engine reads, done in the test
Spark worker's own session: its Hive metastore is an embedded Derby database, which one JVM
opens at a time, so the test's process cannot open it beside the worker.

The task below runs in that worker (`start_worker(..., include=("tests.spark_tables",))`);
`append_slices` sends it and waits for what it wrote in its `done` file."""

import shutil
import tempfile
from datetime import date
from pathlib import Path

from celery import shared_task

from scoring.engine.spark import session

APPEND_SLICES = "tests.spark_tables.append_slices"


@shared_task(name=APPEND_SLICES)
def append_slices_in_worker(table: str, root: str, days: list[str], files: int, done: str):
    """Append the slices of these days of a hive-partitioned Parquet folder to a catalog
    table partitioned by dt, `files` files a slice, with saveAsTable as an ETL job would
    (the first call makes the table); `done` gets "ok" or the error."""
    try:
        spark = session.get()
        database, _, _ = table.rpartition(".")
        if database:
            spark.sql(f"CREATE DATABASE IF NOT EXISTS {database}")
        frame = spark.read.option("basePath", root).parquet(*(f"{root}/dt={d}" for d in days))
        frame.repartition(files).write.mode("append").partitionBy("dt").saveAsTable(table)
        outcome = "ok"
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    partial = Path(f"{done}.partial")
    partial.write_text(outcome)
    partial.replace(done)


def append_slices(app, table: str, root: Path, days: list[date], files: int = 1) -> None:
    """Append these slices of `root` to `table`, in the test's Spark worker."""
    from tests.flows import wait_until  # the test's side only: the worker needs none of it

    done = Path(tempfile.mkdtemp(prefix="dropscore-spark-table-")) / "done"
    app.send_task(APPEND_SLICES, args=[table, str(root), [str(d) for d in days], files, str(done)])
    wait_until(done.exists, f"the Spark worker appended {days} to {table}", timeout=120)
    outcome = done.read_text()
    shutil.rmtree(done.parent)
    assert outcome == "ok", outcome
