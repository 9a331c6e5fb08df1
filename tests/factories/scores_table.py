"""The scores table as the tests write and read it: runs' files written and committed
without a worker, and what a reader (Polars) and S3 see of them."""

from dataclasses import dataclass
from datetime import UTC, date, datetime

import numpy as np
import polars as pl
import pyarrow as pa
from django.conf import settings

from scoring.engine import scores
from scoring.packages import storage

DAY = date(2026, 11, 2)


@dataclass(frozen=True)
class Version:
    number: int


@dataclass(frozen=True)
class Run:
    """What a RunWriter reads of a run: its partition and the ids its rows carry."""

    id: int
    deployment_id: int
    date: date
    attempts: int = 1
    version: Version = Version(1)
    role: str = "champion"
    split_share: float | None = None  # a challenger without one is a shadow


def written(
    run_id: int,
    model_id: int,
    day: date = DAY,
    rows: int = 50,
    parts: int = 1,
    role: str = "champion",
    split_share: float | None = None,
):
    """A run's scores files (one per part), on S3 but not in the table yet."""
    run = Run(id=run_id, deployment_id=model_id, date=day, role=role, split_share=split_share)
    files = []
    for part in range(parts):
        writer = scores.RunWriter(run, part)
        ids = np.arange(part * rows, (part + 1) * rows)
        writer.write(pa.array(ids), pa.array(np.full(rows, run_id / 1e6)), datetime.now(UTC))
        files.append(writer.close())
    return files


def commit_runs(runs: dict[int, int], day: date = DAY, parts: int = 1, rows: int = 50) -> None:
    """Commit {model_id: run_id} for `day` in one transaction, as a shard does."""
    files = [f for model, run in runs.items() for f in written(run, model, day, rows, parts)]
    scores.commit(day, champions(runs), files)


def champions(model_ids) -> list[tuple[int, str]]:
    return [(model_id, "champion") for model_id in model_ids]


def partitions() -> dict[tuple[str, int], tuple[list[int], list[int]]]:
    """What a reader (Polars) sees: per (dt, model_id), its run ids and its entity ids."""
    frame = pl.read_delta(scores.table_uri(), storage_options=scores.storage_options())
    seen = {}
    for (day, model_id), rows in frame.group_by(["dt", "model_id"]):
        seen[(day, model_id)] = (
            sorted(set(rows["run_id"].to_list())),
            sorted(rows["entity_id"].to_list()),
        )
    return seen


def table_objects() -> set[str]:
    """Every data file under the table's folder on S3 (the log left out)."""
    paginator = storage.client().get_paginator("list_objects_v2")
    keys = set()
    for page in paginator.paginate(Bucket=settings.SCORES_BUCKET, Prefix=f"{scores.TABLE}/"):
        keys.update(item["Key"].split("/", 1)[1] for item in page.get("Contents", []))
    return {key for key in keys if not key.startswith("_delta_log/")}


def referenced_files() -> set[str]:
    table = scores.open_table()
    return set(pa.table(table.get_add_actions()).column("path").to_pylist())


def files_per_partition() -> dict[tuple[str, int], int]:
    files = pa.table(scores.open_table().get_add_actions(flatten=True))
    counts = {}
    for day, model_id in zip(
        files["partition.dt"].to_pylist(), files["partition.model_id"].to_pylist(), strict=True
    ):
        counts[(day, model_id)] = counts.get((day, model_id), 0) + 1
    return counts


def entities(count: int, parts: int = 1) -> list[int]:
    return list(range(count * parts))
