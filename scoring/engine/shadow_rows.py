"""Shadow challengers' rows that versions before `scores_shadow` left in the live table,
moved there: the first step of the daily maintenance after the deleted models' (a
shadow's rows are no live scores, and a reader of `scores` must find one row per entity).

A file of `scores` whose rows are a challenger's (its `role` statistics: a file holds one
run's rows) from a run without a split is copied under the same path into
`scores_shadow` and added to its log, then removed from the log of `scores`. Run twice,
or again after a crash between the two commits, it adds nothing twice (a path already in
`scores_shadow` is not added again) and removes what is left. Removing changes the log
only: a reader holding an older snapshot of `scores` still reads the file until vacuum
deletes it, SCORES_RETENTION_HOURS later.
"""

import json
import logging
import time
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable
from deltalake.transaction import AddAction, RemoveAction
from django.conf import settings

from scoring.engine import scores
from scoring.models import Role, ScoringRun
from scoring.packages import storage

log = logging.getLogger(__name__)


def move() -> int:
    """Move the shadow rows of `scores` to `scores_shadow`; how many files moved."""
    live = scores.open_table(scores.TABLE)
    if live is None:
        return 0
    files = shadow_files(live)
    if not files.num_rows:
        return 0
    copy_objects(files["path"].to_pylist())
    adds = add_actions(files)
    paths = {add.path for add in adds}
    id_type = files.schema.field("min.entity_id").type
    scores.transact(
        lambda shadow: [add for add in adds if add.path not in logged(shadow)],
        scores.schema(id_type),
        scores.SHADOW_TABLE,
    )
    scores.transact(lambda table: removals(table, paths), name=scores.TABLE)
    log.info("moved %s files of shadow challengers from scores to scores_shadow", len(paths))
    return len(paths)


def shadow_files(live: DeltaTable) -> pa.Table:
    """The files of the live table that hold a shadow challenger's rows."""
    files = pa.table(live.get_add_actions(flatten=True))
    if "min.role" not in files.column_names:  # a table made before roles: no challenger
        return files.slice(0, 0)
    challengers = files.filter(pc.equal(files["min.role"], Role.CHALLENGER.value))
    run_ids = set(challengers["min.run_id"].to_pylist())
    shadows = ScoringRun.objects.filter(
        id__in=run_ids, role=Role.CHALLENGER, split_share__isnull=True
    ).values_list("id", flat=True)
    return challengers.filter(
        pc.is_in(challengers["min.run_id"], value_set=pa.array(list(shadows), pa.int64()))
    )


def copy_objects(paths: list[str]) -> None:
    """Each file under the same path in the shadow table's folder (S3 copies it)."""
    client = storage.client()
    for path in paths:
        client.copy_object(
            Bucket=settings.SCORES_BUCKET,
            Key=f"{scores.SHADOW_TABLE}/{path}",
            CopySource={"Bucket": settings.SCORES_BUCKET, "Key": f"{scores.TABLE}/{path}"},
        )


def add_actions(files: pa.Table) -> list[AddAction]:
    """The files as added to another table, with the statistics readers prune on."""
    columns = [name.removeprefix("min.") for name in files.column_names if name.startswith("min.")]
    now = int(time.time() * 1000)
    actions = []
    for row in files.to_pylist():
        stats = {
            "numRecords": row["num_records"],
            "minValues": {name: as_stat(row[f"min.{name}"]) for name in columns},
            "maxValues": {name: as_stat(row[f"max.{name}"]) for name in columns},
            "nullCount": {name: row.get(f"null_count.{name}") or 0 for name in columns},
        }
        actions.append(
            AddAction(
                path=row["path"],
                size=row["size_bytes"],
                partition_values={
                    "dt": row["partition.dt"],
                    "model_id": str(row["partition.model_id"]),
                },
                modification_time=now,
                data_change=True,
                stats=json.dumps(stats),
            )
        )
    return actions


def as_stat(value):
    return scores.delta_time(value) if isinstance(value, datetime) else value


def logged(table: DeltaTable) -> set[str]:
    return set(pa.table(table.get_add_actions()).column("path").to_pylist())


def removals(table: DeltaTable, paths: set[str]) -> list[RemoveAction]:
    """The moved files still in the live table's log, to remove."""
    files = pa.table(table.get_add_actions(flatten=True))
    return scores.remove_actions(
        files.filter(pc.is_in(files["path"], value_set=pa.array(list(paths), pa.string())))
    )
