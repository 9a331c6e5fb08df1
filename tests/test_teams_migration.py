"""Existing data through the teams migration: every model stays its person's, as before."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = [pytest.mark.django_db(transaction=True)]

BEFORE = [("scoring", "0015_online")]


def migrate(targets) -> object:
    """Migrate to `targets`; the apps (historical models) as they are there."""
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


def test_after_the_migration_every_model_is_personal_and_named_as_before():
    latest = MigrationExecutor(connection).loader.graph.leaf_nodes()
    old = migrate(BEFORE)
    try:
        user = old.get_model("auth", "User").objects.create(username="olga")
        deployment = old.get_model("scoring", "Deployment").objects.create(
            owner=user, name="churn", slug="churn", email="olga@bank.example"
        )
        report = old.get_model("scoring", "Report").objects.create(
            batch=old.get_model("scoring", "Batch").objects.create(), owner=user, status="ok"
        )
    finally:
        new = migrate(latest)
    moved = new.get_model("scoring", "Deployment").objects.get(id=deployment.id)
    assert (moved.owner_id, moved.team_id, moved.name) == (user.id, None, "churn")
    kept = new.get_model("scoring", "Report").objects.get(id=report.id)
    assert (kept.owner_id, kept.team_id) == (user.id, None)
    assert not new.get_model("scoring", "Membership").objects.exists()
