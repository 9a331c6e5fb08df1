"""The Delta scores table at fleet scale, on the real S3 server: shards committing at once,
and the maintenance (compaction, vacuum, checkpoint) under a reader that must see every
partition whole."""

import io
import threading
from datetime import UTC, date, datetime, timedelta

import polars as pl
import pyarrow as pa
import pytest
from deltalake import write_deltalake
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from scoring.engine import maintenance, scores, shadow_rows
from scoring.packages import storage
from tests.factories.scores_table import (
    DAY,
    champions,
    commit_runs,
    entities,
    files_per_partition,
    partitions,
    referenced_files,
    table_objects,
    written,
)

pytestmark = pytest.mark.django_db(transaction=True)


# --- commits ---------------------------------------------------------------------------


def test_a_commit_replaces_its_partitions_whole_and_leaves_the_others(table):
    commit_runs({1: 11, 2: 21, 3: 31})
    commit_runs({1: 12, 3: 32}, parts=2)

    assert partitions() == {
        (DAY.isoformat(), 1): ([12], entities(50, parts=2)),
        (DAY.isoformat(), 2): ([21], entities(50)),
        (DAY.isoformat(), 3): ([32], entities(50, parts=2)),
    }


def test_a_thousand_runs_commit_in_one_transaction(table):
    fleet = {model: 1000 + model for model in range(1, 1001)}
    files = [f for model, run in fleet.items() for f in written(run, model, rows=3)]

    scores.commit(DAY, champions(fleet), files)
    scores.commit(DAY, champions(fleet)[:500], files[:500])  # a retried half: replaced, not doubled

    seen = partitions()
    assert len(seen) == 1000
    assert all(seen[(DAY.isoformat(), m)] == ([r], [0, 1, 2]) for m, r in fleet.items())
    assert len(referenced_files()) == 1000


def shards_at_once(shards: list[dict[int, int]], files: list[list[dict]]) -> list:
    """Each shard's commit in a thread of its own, started together: their errors."""
    start = threading.Barrier(len(shards))
    errors = []

    def commit(shard, shard_files):
        start.wait()
        try:
            scores.commit(DAY, champions(shard), shard_files)
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()  # the thread's own

    threads = [
        threading.Thread(target=commit, args=(shard, shard_files))
        for shard, shard_files in zip(shards, files, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def shard_files(shard: dict[int, int]) -> list[dict]:
    return [f for model, run in shard.items() for f in written(run, model)]


def test_a_table_made_before_roles_gains_them_and_each_role_replaces_only_its_own_rows(table):
    before_roles = pa.table(
        {
            "entity_id": pa.array(range(50), pa.int64()),
            "score": pa.array([0.5] * 50),
            "model_id": pa.array([1] * 50, pa.int64()),
            "model_version": pa.array([1] * 50, pa.int32()),
            "run_id": pa.array([10] * 50, pa.int64()),
            "scored_at": pa.array([datetime.now(UTC)] * 50, pa.timestamp("us", tz="UTC")),
            "dt": [DAY.isoformat()] * 50,
        }
    )
    write_deltalake(
        scores.table_uri(),
        before_roles,
        partition_by=scores.PARTITIONS,
        storage_options=scores.storage_options(),
    )

    def runs_by_role() -> dict:
        frame = pl.read_delta(scores.table_uri(), storage_options=scores.storage_options())
        return {
            role: (sorted(set(rows["run_id"].to_list())), rows.height)
            for (role,), rows in frame.group_by("role")
        }

    scores.commit(DAY, [(1, "challenger")], written(12, 1, role="challenger", split_share=0.5))
    assert runs_by_role() == {None: ([10], 50), "challenger": ([12], 50)}

    scores.commit(DAY, [(1, "champion")], written(11, 1))  # the old rows were the champion's
    assert runs_by_role() == {"champion": ([11], 50), "challenger": ([12], 50)}

    scores.commit(
        DAY, [(1, "challenger")], written(13, 1, role="challenger", split_share=0.5, rows=20)
    )
    assert runs_by_role() == {"champion": ([11], 50), "challenger": ([13], 20)}


def commits_share_the_lock() -> bool:
    """Whether two commits hold the commit lock at once (scores.commit_lock): PostgreSQL's
    advisory lock is shared under conditional writes; SQLite's lock is the commit's
    IMMEDIATE transaction, which one connection holds at a time."""
    return connection.vendor == "postgresql" and settings.S3_CONDITIONAL_PUT


def test_two_shards_replacing_partitions_at_once_both_land(table, monkeypatch, caplog):
    """Where commits share the lock, both read the table before either commits (a barrier
    once they found what they replace): delta-rs fails the second, though the shards'
    partitions are disjoint, and the commit is tried again on the table as the first left
    it. Where they take turns (SQLite), the second reads the table as the first left it:
    nothing conflicts. Both land either way."""
    first, second = {1: 11, 2: 21}, {3: 31, 4: 41}
    assert shards_at_once([first, second], [shard_files(first), shard_files(second)]) == []
    before = scores.open_table().version()
    replaced = scores.replaced_files
    shared = commits_share_the_lock()
    both_read = threading.Barrier(2)
    read_versions = []

    def read_then_wait(table, day, model_ids):
        found = replaced(table, day, model_ids)
        read_versions.append(table.version())
        if shared and threading.current_thread().name not in waited:
            waited.add(threading.current_thread().name)
            both_read.wait(timeout=30)
        return found

    waited = set()
    monkeypatch.setattr(scores, "replaced_files", read_then_wait)
    first, second = {1: 12, 2: 22}, {3: 32, 4: 42}
    errors = shards_at_once([first, second], [shard_files(first), shard_files(second)])

    assert errors == []
    if shared:
        assert sorted(read_versions) == [before, before, before + 1]
        assert "conflicted, again" in caplog.text
    else:
        assert sorted(read_versions) == [before, before + 1]
        assert "conflicted" not in caplog.text
    assert partitions() == {
        (DAY.isoformat(), model): ([run], entities(50))
        for model, run in {**first, **second}.items()
    }


def test_two_shards_committing_at_once_under_the_database_lock_both_land(table, settings):
    """An S3 server without conditional writes: the commits take turns."""
    settings.S3_CONDITIONAL_PUT = False
    for attempt in (1, 2):
        shards = [
            {model: model * 10 + attempt for model in range(1, 4)},
            {model: model * 10 + attempt for model in range(4, 7)},
        ]
        assert shards_at_once(shards, [shard_files(shard) for shard in shards]) == []
        assert partitions() == {
            (DAY.isoformat(), model): ([model * 10 + attempt], entities(50))
            for model in range(1, 7)
        }


# --- maintenance -----------------------------------------------------------------------


def many_small_commits(today: date) -> None:
    """Three past days of four models scored in three parts each, one model retried,
    and today's runs (never compacted)."""
    for back in (3, 2, 1):
        day = today - timedelta(days=back)
        commit_runs({model: back * 100 + model for model in range(1, 5)}, day, parts=3)
    commit_runs({2: 902}, today - timedelta(1), parts=3)  # model 2 retried yesterday
    commit_runs({1: 1001, 2: 1002}, today, parts=3)


def test_maintenance_compacts_checkpoints_and_keeps_every_partition_whole(table, settings):
    today = date(2026, 11, 10)
    many_small_commits(today)
    before = partitions()
    replaced = table_objects() - referenced_files()  # the retried run's first files
    assert len(replaced) == 3

    settings.SCORES_RETENTION_HOURS = 168
    report = maintenance.maintain(today).tables[scores.TABLE]

    assert report.days_compacted == [(today - timedelta(back)).isoformat() for back in (3, 2, 1)]
    assert (report.files_compacted, report.files_written) == (36, 12)
    counts = files_per_partition()
    assert all(counts[(day, m)] == 1 for day, m in counts if day < today.isoformat())
    assert counts[(today.isoformat(), 1)] == counts[(today.isoformat(), 2)] == 3
    assert partitions() == before
    checkpoints = [
        key
        for key in storage_keys("_delta_log/")
        if key.endswith(f"{report.checkpoint_version:020d}.checkpoint.parquet")
    ]
    assert len(checkpoints) == 1
    # Nothing is old enough yet: the replaced and the compacted files stay for readers.
    assert report.files_vacuumed == 0
    assert replaced <= table_objects()
    assert len(table_objects() - referenced_files()) == 3 + 36


def test_vacuum_removes_only_the_files_no_version_references_past_the_retention(table, settings):
    today = date(2026, 11, 10)
    many_small_commits(today)
    before = partitions()
    maintenance.maintain(today)
    unreferenced = table_objects() - referenced_files()

    settings.SCORES_RETENTION_HOURS = 0
    report = maintenance.maintain(today).tables[scores.TABLE]

    assert report.files_vacuumed == len(unreferenced) == 3 + 36
    assert report.bytes_vacuumed > 0
    assert table_objects() == referenced_files()
    assert partitions() == before


def test_the_maintenance_command_says_what_it_did(table, settings):
    today = timezone.localdate()
    commit_runs({1: 11}, today - timedelta(days=1), parts=2)
    commit_runs({1: 12}, today - timedelta(days=1), parts=2)
    settings.SCORES_RETENTION_HOURS = 0
    out = io.StringIO()

    call_command("maintain_scores", stdout=out)

    assert out.getvalue().startswith("scores: compacted 2 files (")
    assert "into 1 in 1 days; vacuumed 4 files (" in out.getvalue()
    assert "older than 0 h; checkpoint at version" in out.getvalue()


def test_a_run_committing_while_compaction_rewrites_its_partition_waits_for_it(table, monkeypatch):
    """The run found its partition's files when a compaction starts (in another worker):
    the compaction waits for the run's commit, then compacts the table the run left.
    (Without the lock, delta-rs 1.6.6 let the run's commit remove files the compaction had
    already rewritten: the old rows came back beside the run's.)"""
    today = date(2026, 11, 10)
    many_small_commits(today)
    yesterday = today - timedelta(days=1)
    replaced = scores.replaced_files
    report = maintenance.TableReport()

    def compact_in_another_worker():
        try:
            maintenance.compact(scores.open_table(), yesterday, report)
        finally:
            connection.close()  # the thread's own

    compaction = threading.Thread(target=compact_in_another_worker)

    def compaction_starts_meanwhile(table, day, model_ids):
        found = replaced(table, day, model_ids)
        if not compaction.is_alive() and not report.days_compacted:
            compaction.start()
            compaction.join(timeout=5)  # it finishes now only if nothing holds it back
        return found

    monkeypatch.setattr(scores, "replaced_files", compaction_starts_meanwhile)
    commit_runs({3: 903}, yesterday, parts=2)
    compaction.join(timeout=60)

    assert report.files_compacted == 3 * 3 + 2  # models 1, 2, 4 and the run's two parts
    seen = partitions()
    assert seen[(yesterday.isoformat(), 3)] == ([903], entities(50, parts=2))
    assert seen[(yesterday.isoformat(), 2)] == ([902], entities(50, parts=3))
    assert set(files_per_partition().values()) == {1, 3}  # today's are not compacted


def test_maintenance_removes_the_slice_copies_of_closed_batches_only(table):
    """A batch its units close removes its copies; one tick closed after its worker died
    leaves them to maintenance, which must not touch an open batch's."""
    from scoring.models import Batch

    closed = Batch.objects.create(finished_at=timezone.now())
    open_ = Batch.objects.create()
    for batch in (closed, open_):
        key = f"slices/batch-{batch.id}/date-{DAY.isoformat()}/part-0/dt={DAY}/rows.parquet"
        storage.client().put_object(Bucket=settings.SCORES_BUCKET, Key=key, Body=b"rows")

    report = maintenance.maintain()

    assert report.slice_copies_removed == 1
    listing = storage.client().list_objects_v2(Bucket=settings.SCORES_BUCKET, Prefix="slices/")
    assert [item["Key"].split("/")[1] for item in listing["Contents"]] == [f"batch-{open_.id}"]


def storage_keys(prefix: str) -> list[str]:
    listing = storage.client().list_objects_v2(
        Bucket=settings.SCORES_BUCKET, Prefix=f"{scores.TABLE}/{prefix}"
    )
    return [item["Key"] for item in listing.get("Contents", [])]


def test_beat_sends_the_maintenance_daily_at_three_by_the_name_of_a_real_task():
    from celery.schedules import crontab

    from scoring import tasks

    entry = settings.CELERY_BEAT_SCHEDULE["maintain-scores-table"]
    assert entry["task"] == tasks.maintain_scores_table.name
    assert entry["schedule"] == crontab(minute="0", hour="3")


# --- shadow challengers' rows left in the live table -------------------------------------


def legacy_runs(owner) -> dict[str, object]:
    """A model scored before `scores_shadow` existed: its champion's rows and its shadow
    challenger's (the same 50 entities) in `scores`; and a model with a split challenger."""
    from scoring.models import Role, ScoringRun
    from tests.factories.runs import make_models

    shadowed, split = make_models(owner, 2, prefix="legacy")

    def run(deployment, role, share=None):
        version = deployment.champion
        if role == Role.CHALLENGER:  # its version 2
            version.pk, version.number, version.file = None, 2, f"{version.file}-v2"
            version.save()
        return ScoringRun.objects.create(
            deployment=deployment, version=version, date=DAY, role=role, split_share=share
        )

    runs = {
        "champion": run(shadowed, Role.CHAMPION),
        "shadow": run(shadowed, Role.CHALLENGER),
        "split": run(split, Role.CHALLENGER, 0.5),
    }
    for run_ in runs.values():
        # What the old code wrote: every challenger's rows in the live table.
        files = written(run_.id, run_.deployment_id, DAY, role=run_.role, split_share=0.5)
        scores.commit(DAY, [(run_.deployment_id, run_.role)], files)
    return runs


def by_table(name: str) -> dict[tuple[int, str], tuple[int, int]]:
    """{(model, role): (rows, distinct entities)} of a table on DAY, as Polars reads it."""
    frame = pl.read_delta(scores.table_uri(name), storage_options=scores.storage_options())
    frame = frame.filter(pl.col("dt") == DAY.isoformat())
    return {
        (model_id, role): (rows.height, rows["entity_id"].n_unique())
        for (model_id, role), rows in frame.group_by(["model_id", "role"])
    }


def test_maintenance_moves_shadow_rows_to_their_table_once_and_old_snapshots_still_read(
    table, owner, monkeypatch
):
    runs = legacy_runs(owner)
    shadowed, split = runs["shadow"].deployment_id, runs["split"].deployment_id
    before = scores.open_table().version()
    assert by_table(scores.TABLE)[(shadowed, "challenger")] == (50, 50)

    # A crash between the two commits: the rows are in both tables; the next run ends it.
    removals = shadow_rows.removals
    monkeypatch.setattr(shadow_rows, "removals", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        maintenance.maintain()
    monkeypatch.setattr(shadow_rows, "removals", removals)
    assert maintenance.maintain().shadow_files_moved == 1
    assert maintenance.maintain().shadow_files_moved == 0  # safe to run again

    assert by_table(scores.TABLE) == {
        (shadowed, "champion"): (50, 50),
        (split, "challenger"): (50, 50),  # a split challenger's rows are live
    }
    assert by_table(scores.SHADOW_TABLE) == {(shadowed, "challenger"): (50, 50)}
    shadow_run = runs["shadow"]
    shadow_run.refresh_from_db()
    assert [len(batch) for batch in scores.run_scores(shadow_run)] == [50]
    # A reader of the version before still finds every row it listed, until vacuum.
    old = pl.read_delta(
        scores.table_uri(), version=before, storage_options=scores.storage_options()
    )
    assert old.filter(pl.col("model_id") == shadowed).height == 100
