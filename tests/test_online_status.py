"""The status page's Online section: the serving processes as each writes itself to the
portal's Redis (scoring.online: every 5 s, a 30 s expiry), on the page and in /status.json;
another user's models counted, never named."""

import json
import uuid
from datetime import UTC, datetime

import pytest
import redis

from scoring import redis_keys
from scoring.models import Deployment
from tests.factories.cast import session
from tests.factories.web import SECRET_NAME

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("bucket", "default_quotas"),
]

STARTED = datetime(2026, 3, 10, 8, 0, tzinfo=UTC)


@pytest.fixture
def rds(celery_app_configured, settings):
    """The session's Redis under a prefix of the test's own: the page lists the processes
    the test writes, not the session's serving process. Its keys go at the end."""
    settings.REDIS_KEY_PREFIX = f"{settings.REDIS_KEY_PREFIX}status-{uuid.uuid4().hex[:6]}:"
    client = redis.Redis.from_url(settings.REDIS_URL)
    yield client
    for key in client.scan_iter(match=f"{settings.REDIS_KEY_PREFIX}online:*"):
        client.delete(key)


@pytest.fixture
def mallorys(outsider) -> Deployment:
    return Deployment.objects.create(owner=outsider, name="mallory-spend", slug="mallory-spend")


def report(*models, dropped: int = 0, **fields) -> dict:
    return {
        "url": "http://10.0.0.5:8001",
        "started_at": STARTED.isoformat(),
        "models": list(models),
        "requests": 1234,
        "log": {"queued": 12, "dropped": dropped, "written": 5678, "last_error": None},
        "protections": {
            "network": {"active": True, "detail": "a network namespace of its own"},
            "environment": {"active": True, "detail": "none of the server's variables"},
            "files": {"active": False, "detail": "not available: Landlock: not implemented"},
        },
        **fields,
    }


def served(deployment: Deployment, state: str = "ready") -> dict:
    return {
        "id": deployment.id,
        "name": deployment.name,
        "version": 1,
        "role": "champion",
        "state": state,
    }


def write(rds, name: str, value) -> None:
    rds.set(redis_keys.online_process(name), json.dumps(value), ex=30)


def test_without_a_serving_process_the_page_says_how_to_start_one(alice, rds):
    page = alice.get("/status/").content.decode()
    body = alice.get("/status.json").json()

    assert (
        "No online serving process is running (start one with <code>manage.py serve_online</code>)."
        in page
    )
    assert body["online"] == {
        "detail": "No online serving process is running (start one with `manage.py serve_online`)",
        "read": True,
        "processes": [],
    }


def test_a_serving_process_is_listed_with_its_models_requests_log_and_protections(
    alice, deployment, rds
):
    write(rds, "web-1:4242", report(served(deployment), served(deployment, "loading")))

    page = alice.get("/status/").content.decode()
    [process] = alice.get("/status.json").json()["online"]["processes"]

    assert process["name"] == "web-1:4242"
    assert process["url"] == "http://10.0.0.5:8001"
    assert process["requests"] == 1234
    assert process["dropped"] == ""
    assert [m["state"] for m in process["models"]] == ["ready", "loading"]
    assert [(p["name"], p["active"]) for p in process["protections"]] == [
        ("Secrets hidden from its environment", True),
        ("Files read-only outside its folder", False),
        ("Network cut", True),
    ]
    assert 'data-process="web-1:4242"' in page
    assert "http://10.0.0.5:8001" in page
    assert "<span data-requests>1234</span> requests answered" in page
    assert "log: 5678 rows written, 12 waiting" in page
    assert f'<a class="name" href="/models/{deployment.id}/">{SECRET_NAME}</a>' in page
    assert '<span class="light ok">ready</span>' in page
    assert '<span class="light warning">loading</span>' in page
    assert "Landlock: not implemented" in page
    assert "No online serving process is running" not in page
    assert "dropped from the log" not in page


def test_rows_the_log_dropped_are_said_plainly(alice, deployment, rds):
    write(rds, "web-1:4242", report(served(deployment), dropped=250))

    page = alice.get("/status/").content.decode()
    [process] = alice.get("/status.json").json()["online"]["processes"]

    message = "250 request rows were dropped from the log: its writer fell behind."
    assert process["dropped"] == message
    assert f'<p class="error-box" data-dropped="250">{message}</p>' in page


def test_another_users_models_are_counted_and_never_named(deployment, mallorys, outsider, rds):
    write(rds, "web-1:4242", report(served(deployment), served(mallorys)))

    mallory = session(outsider)
    page = mallory.get("/status/").content.decode()
    [process] = mallory.get("/status.json").json()["online"]["processes"]

    assert [m["name"] for m in process["models"]] == ["mallory-spend"]
    assert process["others"] == 1
    assert SECRET_NAME not in page and SECRET_NAME not in json.dumps(process)
    assert "and 1 model of other users." in page


def test_staff_see_every_model_served(deployment, mallorys, staff, rds):
    write(rds, "web-1:4242", report(served(deployment), served(mallorys)))

    [process] = session(staff).get("/status.json").json()["online"]["processes"]

    assert [m["name"] for m in process["models"]] == [SECRET_NAME, "mallory-spend"]
    assert process["others"] == 0


def test_several_processes_are_listed_by_name_and_another_portals_are_not(alice, rds):
    write(rds, "web-2:7", report())
    write(rds, "web-1:9", report(log=None))
    rds.set("dropscore:another-portal:online:process:web-9:1", json.dumps(report()), ex=30)

    processes = alice.get("/status.json").json()["online"]["processes"]
    page = alice.get("/status/").content.decode()

    assert [p["name"] for p in processes] == ["web-1:9", "web-2:7"]
    assert "web-9:1" not in page
    assert "requests are not logged (ONLINE_LOG off)" in page  # web-1:9 logs nothing
    assert "No model loaded yet: a model is loaded at its first request." in page


def test_a_report_the_page_cannot_read_is_listed_with_why_and_never_fails_it(alice, rds):
    write(rds, "web-1:1", {"url": "http://10.0.0.5:8001", "started_at": "yesterday"})

    response = alice.get("/status/")

    assert response.status_code == 200
    assert "web-1:1" in response.content.decode()
    [process] = alice.get("/status.json").json()["online"]["processes"]
    assert process["error"].startswith("its report cannot be read: ValueError")
