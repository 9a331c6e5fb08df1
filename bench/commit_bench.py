"""Seconds per `scores.commit` of 1, 100 and 1,000 runs' files on a real S3 server.

A fleet's batch (or one shard of it) commits its runs in one Delta transaction: each
run's (dt, model_id) partition replaced whole. Measured in the same run, against a
SeaweedFS server started for the bench, on a table that already holds `--days` earlier
days of 1,000 models each (365 days: a year of a 1,000-model fleet, 365,000 files):
- new: N partitions committed for the first time;
- replaced: the same N partitions again (their old files found and removed);
- ckpt+repl: replaced again right after a checkpoint of the latest version (what the
  daily maintenance writes), so opening the table replays no log entry;
- log entry: the size of the replacing commit's JSON log entry.
A commit opens the table (its last checkpoint and every log entry since) and delta-rs
replays it once more after committing: at a year's 365,000 files both take about a
second each, whatever the number of runs.
Each run's file is small (`--rows` scores), written beforehand with the engine's
RunWriter: only the commit is timed. The earlier days are log entries only (their files
are never read by a commit, so they are not written: a year of them would take an hour).
Timings on a shared machine are noisy.

    .venv/bin/python bench/commit_bench.py [--runs 1,100,1000] [--days 365] [--lock]
"""

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


@dataclass(frozen=True)
class Version:
    number: int


@dataclass
class Run:
    """What a RunWriter reads of a run: its partition and the ids its rows carry."""

    id: int
    deployment_id: int
    date: date
    attempts: int = 1
    version: Version = Version(1)
    role: str = "champion"


def written_files(day: date, model_ids: range, rows: int, attempt: int) -> list[dict]:
    """Each model's scores file for `day`, on S3 but not yet in the table."""
    from scoring.engine import scores

    def write(model_id: int) -> dict:
        run = Run(id=model_id * 1000 + attempt, deployment_id=model_id, date=day, attempts=attempt)
        writer = scores.RunWriter(run)
        rng = np.random.default_rng(model_id)
        writer.write(pa.array(np.arange(rows)), pa.array(rng.random(rows)), datetime.now(UTC))
        return writer.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(write, model_ids))


def logged_only(template: dict, day: date, model_ids: range) -> list[dict]:
    """Add actions of a past day, pointing at files that were never written."""
    files = []
    for model_id in model_ids:
        partition = {"dt": day.isoformat(), "model_id": str(model_id)}
        path = f"dt={day.isoformat()}/model_id={model_id}/history-{model_id}.parquet"
        files.append({**template, "path": path, "partition_values": partition})
    return files


def log_entry_bytes(version: int) -> int:
    from django.conf import settings

    from scoring.packages import storage

    key = f"scores/_delta_log/{version:020d}.json"
    return storage.client().head_object(Bucket=settings.SCORES_BUCKET, Key=key)["ContentLength"]


def timed_commit(day: date, model_ids: range, files: list[dict]) -> float:
    from scoring.engine import scores

    start = time.perf_counter()
    scores.commit(day, [(m, "champion") for m in model_ids], files)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default="1,100,1000", help="runs per commit, comma-separated")
    parser.add_argument("--days", type=int, default=365, help="earlier days of 1,000 models")
    parser.add_argument("--rows", type=int, default=100, help="scores per run")
    parser.add_argument(
        "--lock", action="store_true", help="the database lock, not conditional_put"
    )
    args = parser.parse_args()
    sizes = [int(size) for size in args.runs.split(",")]
    work = Path(tempfile.mkdtemp(prefix="dropscore-commit-bench-"))
    os.environ.update(
        {
            "DROPSCORE_STATE_DIR": str(work / "state"),
            "SCORES_BUCKET": "bench-commit-scores",
            "S3_CONDITIONAL_PUT": "false" if args.lock else "true",
            "DJANGO_SETTINGS_MODULE": "portal.settings",
        }
    )
    from deploy import services

    s3 = services.start_seaweedfs(work / "state", "dropscore", "dropscore-secret")
    try:
        os.environ["S3_ENDPOINT_URL"] = s3.url
        import django

        django.setup()
        from scoring.engine import scores
        from scoring.packages import storage

        storage.ensure_buckets()
        today = date.today()
        fleet = range(1, 1001)
        if args.days:
            print(f"filling the table: {args.days} days x 1,000 models ...", flush=True)
        template = written_files(today - timedelta(days=args.days + 1), range(1, 2), 10, 1)[0]
        for back in range(args.days, 0, -1):
            day = today - timedelta(days=back)
            scores.commit(day, [(m, "champion") for m in fleet], logged_only(template, day, fleet))
        table = scores.open_table()
        version = table.version() if table else -1
        print(
            f"table at version {version}; commit mode: {'lock' if args.lock else 'conditional_put'}"
        )
        print(f"{'runs':>6} {'new':>8} {'replaced':>9} {'ckpt+repl':>10} {'log entry':>10}")
        first_id = 2000
        for size in sizes:
            model_ids = range(first_id, first_id + size)
            first_id += size
            new = timed_commit(today, model_ids, written_files(today, model_ids, args.rows, 1))
            again = timed_commit(today, model_ids, written_files(today, model_ids, args.rows, 2))
            table = scores.open_table()
            entry = log_entry_bytes(table.version())
            table.create_checkpoint()  # what the daily maintenance writes
            checkpointed = timed_commit(
                today, model_ids, written_files(today, model_ids, args.rows, 3)
            )
            print(
                f"{size:>6} {new:>6.2f} s {again:>7.2f} s {checkpointed:>8.2f} s "
                f"{entry / 1024:>7.0f} KB",
                flush=True,
            )
    finally:
        s3.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
