"""Two portals on one Redis (`make test` beside `make run`, a staging beside production): each
status page shows its own Spark executors and tick only, never the other's (REDIS_KEY_PREFIX).
A real Redis."""

import uuid
from datetime import datetime

import pytest
import redis
from django.test import override_settings
from django.utils import timezone

from scoring import tasks
from scoring.engine import worker_probe

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def another_portal(celery_app_configured, redis_url):
    """The key prefix of another portal on this Redis; its keys are removed at the end."""
    prefix = f"dropscore:another-portal-{uuid.uuid4().hex[:8]}:"
    yield prefix
    shared = redis.Redis.from_url(redis_url)
    for key in shared.scan_iter(match=f"{prefix}*"):
        shared.delete(key)


def status_of(client, owner) -> dict:
    client.force_login(owner)
    return client.get("/status.json").json()


def test_another_portals_spark_executors_and_tick_are_not_this_portals(
    client, owner, another_portal
):
    with override_settings(REDIS_KEY_PREFIX=another_portal):
        before = timezone.now()
        tasks.tick()
        worker_probe.keep_executor_report("another-portals-host", {})
        after = timezone.now()

    report = status_of(client, owner)

    hosts = [
        name
        for host in report["services"]["workers"]["sandbox"]["hosts"]
        for name in host["workers"]
    ]
    assert not any("another-portals-host" in name for name in hosts), hosts
    shown = report["last_tick"]["at"]
    assert shown is None or not before <= datetime.fromisoformat(shown) <= after, (
        f"the page shows the other portal's tick: {report['last_tick']}"
    )
