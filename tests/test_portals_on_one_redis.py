"""Two portals on one Redis (`make test` beside `make run`, a staging beside production): each
status page shows its own workers, Spark executors and tick only, never the other's
(REDIS_KEY_PREFIX). A real Redis and real Celery workers."""

import json
import os
import subprocess
import sys
import uuid
from datetime import datetime
from pathlib import Path

import pytest
import redis
from django.test import override_settings
from django.utils import timezone

from deploy import services
from portal import health
from scoring import tasks
from scoring.engine import worker_probe
from tests.flows import stop_worker, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent
# What the test session sets for itself, and a portal started as its operator starts it does not.
PORTALS_OWN = ("REDIS_KEY_PREFIX", "CELERY_QUEUE")


@pytest.fixture
def another_portal(celery_app_configured, redis_url):
    """The key prefix of another portal on this Redis; its keys are removed at the end."""
    prefix = f"dropscore:another-portal-{uuid.uuid4().hex[:8]}:"
    yield prefix
    shared = redis.Redis.from_url(redis_url)
    for key in shared.scan_iter(match=f"{prefix}*"):
        shared.delete(key)


@pytest.fixture
def another_portals_env(worker_env, tmp_path) -> dict[str, str]:
    """The environment of another portal on this Redis, as `make run` starts one: a SQLite
    file of its own and no prefix or queue set (both follow the database)."""
    return {
        **{name: value for name, value in worker_env.items() if name not in PORTALS_OWN},
        "DATABASE_URL": f"sqlite:///{tmp_path / 'another-portal.sqlite3'}",
    }


@pytest.fixture
def another_portals_worker(another_portals_env, tmp_path):
    """A worker of the other portal. Its name."""
    env = another_portals_env
    name = f"another-portal-{uuid.uuid4().hex[:4]}@localhost"
    log = tmp_path / "another-portal-worker.log"
    process = services.celery(
        "worker", env, log, "-n", name, "-c", "1", "--without-gossip", "--without-mingle"
    )
    # Ready (on its roll, answering) once it logs so; asking it would need its control channel.
    wait_until(
        lambda: f"{name} ready." in log.read_text() or process.poll() is not None,
        "the other portal's worker is ready",
        timeout=60,
    )
    assert process.poll() is None, log.read_text()[-3000:]
    yield name
    stop_worker(process)


def status_of(client, owner) -> dict:
    client.force_login(owner)
    return client.get("/status.json").json()


def reporting_workers(report: dict) -> list[str]:
    """Every name the page lists under the workers' sandboxes and environments."""
    workers = report["services"]["workers"]
    return [name for host in workers["sandbox"]["hosts"] for name in host["workers"]] + [
        name
        for environment in workers["environments"]["environments"]
        for name in environment["workers"]
    ]


def test_another_portals_worker_is_not_on_this_portals_status_page(
    client, owner, worker, another_portals_worker, celery_app_configured
):
    _, queue = celery_app_configured

    report = status_of(client, owner)

    workers = report["services"]["workers"]
    assert workers["ok"] and f"{queue}-" in workers["detail"], workers
    assert another_portals_worker not in workers["detail"]
    assert any(name.startswith(f"{queue}-") for name in reporting_workers(report))
    assert another_portals_worker not in reporting_workers(report)


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


AS_MAKE_RUN_SEES = """
import json, django
django.setup()
from portal import health
try:
    workers = health.workers()
except RuntimeError as exc:
    workers = str(exc)
tick = health.last_tick()
print(json.dumps({"workers": workers, "last_tick": tick and tick.isoformat()}))
"""


def test_a_portal_on_this_environments_database_sees_none_of_the_test_sessions_workers_or_ticks(
    worker, celery_app_configured, redis_url
):
    """`make run` after `make test`: a portal started on this Redis with the environment the
    tests were given (its database, no prefix or queue set) as its status page asks."""
    _, queue = celery_app_configured
    tasks.tick()
    session_tick = health.last_tick()

    env = {name: value for name, value in os.environ.items() if name not in PORTALS_OWN}
    seen = what_a_portal_sees({**env, "REDIS_URL": redis_url})

    assert f"{queue}-" not in seen["workers"], seen
    assert seen["last_tick"] != session_tick.isoformat(), seen


def test_a_portal_on_a_sqlite_file_hears_its_own_workers(
    another_portals_env, another_portals_worker, tmp_path
):
    """`make run`'s portal (SQLite): its status page asks its workers on its control channel,
    whose name follows the database's; a path in it broke the workers' broker connection."""
    seen = what_a_portal_sees({**os.environ, **another_portals_env})

    assert another_portals_worker in seen["workers"], seen
    log = (tmp_path / "another-portal-worker.log").read_text()
    assert "Connection to broker lost" not in log, log[-3000:]


def what_a_portal_sees(env: dict[str, str]) -> dict:
    """What a portal started with `env` finds of its workers and tick, as its status page
    asks, from a process of its own (its settings read from `env`, as at a start)."""
    done = subprocess.run(
        [sys.executable, "-c", AS_MAKE_RUN_SEES],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "portal.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
