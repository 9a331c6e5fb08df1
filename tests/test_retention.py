"""A deleted model's scores: kept in the table for DELETED_SCORES_RETENTION_DAYS, then removed
by a Delta commit while readers read every other partition whole (and a reader's older
snapshot still reads the removed ones until vacuum)."""

import io
from datetime import timedelta

import polars as pl
import pytest
from django.core.management import call_command
from django.utils import timezone

from scoring.engine import retention, scores
from scoring.models import DeletedDeployment
from tests.factories.cast import session
from tests.factories.scores_table import DAY, commit_runs, entities, partitions, table_objects
from tests.factories.web import package_file

pytestmark = pytest.mark.django_db(transaction=True)
NEXT_DAY = DAY + timedelta(days=1)


def deleted(model_id: int, days_ago: float) -> DeletedDeployment:
    return DeletedDeployment.objects.create(
        deployment_id=model_id,
        name=f"alice/model-{model_id}",
        deleted_at=timezone.now() - timedelta(days=days_ago),
    )


def upload(api, name: str) -> int:
    """A model uploaded through the API: its package on S3, its rows in the database."""
    response = api.post("/api/v1/models/", {"file": package_file(), "name": name})
    assert response.status_code == 201, response.content
    return response.json()["id"]


def scored_three_models_for_two_days() -> None:
    for day in (DAY, NEXT_DAY):
        commit_runs({1: 11, 2: 21, 3: 31}, day, parts=2)


def test_a_deleted_models_partitions_stay_until_the_retention_ends_then_go(table, settings):
    settings.DELETED_SCORES_RETENTION_DAYS = 90
    scored_three_models_for_two_days()
    tombstone = deleted(2, days_ago=89.9)
    before = partitions()

    assert retention.remove_expired() == []
    assert partitions() == before
    tombstone.deleted_at -= timedelta(hours=3)  # now past 90 days
    tombstone.save()
    version_before = scores.open_table().version()

    assert retention.remove_expired() == [2]

    after = partitions()
    assert {model for _, model in after} == {1, 3}
    assert after == {key: rows for key, rows in before.items() if key[1] != 2}
    assert after[(NEXT_DAY.isoformat(), 3)] == ([31], entities(50, parts=2))
    tombstone.refresh_from_db()
    assert tombstone.scores_removed_at is not None
    # Only the log changed: a reader of the snapshot before still reads model 2 whole.
    older = pl.read_delta(
        scores.table_uri(), version=version_before, storage_options=scores.storage_options()
    )
    kept = older.filter(pl.col("model_id") == 2)
    assert sorted(kept["entity_id"].to_list()) == sorted(entities(50, parts=2) * 2)
    assert any("model_id=2/" in key for key in table_objects())
    assert retention.remove_expired() == []  # done once


def test_a_shorter_retention_applies_to_models_deleted_before(table, settings):
    scored_three_models_for_two_days()
    deleted(1, days_ago=40)
    deleted(3, days_ago=10)
    settings.DELETED_SCORES_RETENTION_DAYS = 30

    assert retention.remove_expired() == [1]
    assert {model for _, model in partitions()} == {2, 3}


def test_the_daily_maintenance_removes_expired_scores_first_and_says_so(table, settings):
    settings.DELETED_SCORES_RETENTION_DAYS = 0
    scored_three_models_for_two_days()
    deleted(3, days_ago=0.01)
    out = io.StringIO()

    call_command("maintain_scores", stdout=out)  # what beat's maintain_scores_table runs

    assert {model for _, model in partitions()} == {1, 2}
    assert "; removed the scores of 1 models deleted more than 0 days ago;" in out.getvalue()


def test_a_deleted_users_models_leave_tombstones_and_their_partitions_go_after_the_retention(
    table, bucket, api, owner, outsider_api, superuser, settings
):
    settings.DELETED_SCORES_RETENTION_DAYS = 30
    churn, spend = (upload(api, name) for name in ("churn", "spend"))
    kept = upload(outsider_api, "fraud")  # another user's model, scored the same days
    for day in (DAY, NEXT_DAY):
        commit_runs({churn: 11, spend: 21, kept: 31}, day)

    response = session(superuser).post(f"/admin/auth/user/{owner.id}/delete/", {"post": "yes"})
    assert response.status_code == 302

    assert bucket("alice/") == []  # their packages left S3, as a model deletion removes them
    assert bucket("mallory/") == ["mallory/fraud/v1.dill"]
    tombstones = DeletedDeployment.objects.order_by("deployment_id")
    assert [(t.deployment_id, t.name) for t in tombstones] == [
        (churn, "alice/churn"),
        (spend, "alice/spend"),
    ]
    assert {model for _, model in partitions()} == {churn, spend, kept}  # kept for the retention
    assert retention.remove_expired() == []

    tombstones.update(deleted_at=timezone.now() - timedelta(days=30, hours=1))
    assert sorted(retention.remove_expired()) == [churn, spend]
    assert {model for _, model in partitions()} == {kept}
