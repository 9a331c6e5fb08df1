"""Sandbox isolation through the real path (a Celery worker validating an upload), and the
status page saying which protections the workers' sandboxes get on this host.

The worker's environment holds the portal's secrets (SECRET_KEY, DATABASE_URL, ...), as
in production; a package reports what it could see in the message of its failed load.
"""

import io
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest
from django.conf import settings
from django.template.defaultfilters import filesizeformat

from portal import health
from scoring.models import PackageVersion
from scoring.packages import deployments
from scoring.sandbox.client import Sandbox
from scoring.sandbox.environments import last_used, size_of
from scoring.sandbox.limits import Limits
from tests.factories import packages
from tests.factories.packages import CELL

pytestmark = pytest.mark.django_db(transaction=True)

WORKER_SECRET = "worker-secret-that-packages-must-not-see"  # conftest's worker_env
ENVIRONMENT_CELL = """
import os

def show_environment():
    raise RuntimeError("environment " + " ".join(f"{k}={v}" for k, v in os.environ.items()))
"""
ENVIRONMENT: dict = {"__name__": "__main__"}
exec(ENVIRONMENT_CELL, ENVIRONMENT)
PROTECTION_NAMES = [
    "Secrets hidden from its environment",
    "Files read-only outside its folder",
    "Other processes hidden",
    "Network cut",
    "Memory limit",
    "Time limit",
    "Process limit",
    "Unprivileged user",
]


def deploy_validated(user, package: dict, name: str, validated) -> PackageVersion:
    data = packages.dumps(package)
    version = deployments.deploy(user, io.BytesIO(data), f"{name}.dill", len(data), name=name)
    return validated(version)


def test_a_package_sees_none_of_the_workers_secrets_in_its_environment(worker, owner, validated):
    assert WORKER_SECRET.encode() in Path(f"/proc/{worker.pid}/environ").read_bytes()
    package = {"model": packages.RunsAtLoad(ENVIRONMENT["show_environment"]), "features": ["a"]}

    version = deploy_validated(owner, package, "environment", validated)

    assert version.state == PackageVersion.State.INVALID
    assert re.search(r"environment .*HOME=\S+", version.message), version.message
    for secret in ("SECRET_KEY", "DATABASE_URL", "REDIS_URL", "S3_", WORKER_SECRET):
        assert secret not in version.message


def test_a_package_cannot_read_the_workers_secrets_from_files(
    worker, owner, validated, state_dir, tmp_path
):
    with Sandbox(tmp_path, Limits()) as sandbox:
        if not sandbox.protections["files"]["active"]:
            pytest.skip(f"files on this host: {sandbox.protections['files']['detail']}")
    workers = [worker.pid, *(p.pid for p in psutil.Process(worker.pid).children())]
    target = state_dir / "target.txt"  # the session's state: S3 data, mail, the worker's log
    target.write_text("the worker's")
    target.chmod(0o666)
    attempts = [
        *(["read", f"/proc/{pid}/environ"] for pid in workers),
        *(["read", f"/proc/{pid}/cmdline"] for pid in workers),
        ["list", "/proc"],
        ["read", str(settings.BASE_DIR / "portal" / "settings.py")],
        ["read", str(state_dir / "worker.log")],
        ["write", str(target)],
    ]
    package = {"model": packages.RunsAtLoad(CELL["try_all"], attempts), "features": ["a"]}

    version = deploy_validated(owner, package, "snoop", validated)

    found = re.search(r"outcomes (\{.*\}) while loading", version.message)
    assert found, version.message
    outcomes = json.loads(found.group(1))
    assert len(outcomes) == len(attempts)
    # Refused, or a read-only view where a folder it may not enter is hidden.
    assert set(outcomes.values()) <= {"EACCES", "EROFS"}, outcomes
    assert target.read_text() == "the worker's"


# --- the status page ---------------------------------------------------------------


def our_host(body: dict, queue: str) -> dict:
    """The entry of the session's worker (other sessions' workers may share the broker)."""
    sandbox = body["services"]["workers"]["sandbox"]
    for host in sandbox["hosts"]:
        if any(name.startswith(f"{queue}-") for name in host["workers"]):
            return host
    raise AssertionError(f"the session's worker did not report: {sandbox}")


def test_the_status_page_lists_what_the_workers_sandboxes_get_on_this_host(
    client, owner, worker, celery_app_configured, tmp_path
):
    """What the page says is what a sandbox started here finds: the test process is on
    the worker's host, as its user."""
    _, queue = celery_app_configured
    client.force_login(owner)
    with Sandbox(tmp_path, Limits()) as sandbox:  # the same host and user as the worker
        here = sandbox.protections

    body = client.get("/status.json").json()
    page = client.get("/status/").content.decode()

    host = our_host(body, queue)
    assert host["error"] == ""
    assert [p["name"] for p in host["protections"]] == PROTECTION_NAMES
    reported = {p["key"]: p for p in host["protections"]}
    assert {key: p["active"] for key, p in reported.items()} == {
        key: p["active"] for key, p in here.items()
    }
    assert reported["environment"]["active"] and reported["memory"]["active"]
    # The worker's own limits, not a default: conftest gives it an 8 s timeout.
    assert reported["time"]["detail"].startswith("8 s per request")
    assert "Sandbox protections" in page
    for name in PROTECTION_NAMES:
        assert f"<td>{name}</td>" in page
    for key, protection in reported.items():
        state = "active" if protection["active"] else "not available"
        row = re.search(rf'<tr data-protection="{key}".*?</tr>', page, re.S)
        assert row and f">{state}</span>" in row.group(0), key


def test_a_protection_the_host_lacks_is_shown_not_available_with_why(client, owner, monkeypatch):
    def one_worker_without_landlock():
        found = {
            "environment": {"active": True, "detail": "none of the worker's variables"},
            "files": {
                "active": False,
                "detail": "not available: Landlock: Function not implemented",
            },
        }
        probed = "2026-01-02T03:04:05+00:00"
        return {"celery@old-kernel": {"protections": found, "error": "", "probed_at": probed}}

    monkeypatch.setattr(health, "sandbox_protections", one_worker_without_landlock)
    client.force_login(owner)

    page = client.get("/status/").content.decode()

    row = re.search(r'<tr data-protection="files".*?</tr>', page, re.S).group(0)
    assert "<td>Files read-only outside its folder</td>" in row
    assert '<span class="light alert">not available</span>' in row
    assert "Landlock: Function not implemented" in row
    assert "reported by celery@old-kernel, probed 2026-01-02 03:04 UTC" in page


def test_the_status_page_says_when_no_worker_reported(client, owner, monkeypatch):
    monkeypatch.setattr(health, "sandbox_protections", lambda: {})
    client.force_login(owner)

    body = client.get("/status.json").json()
    page = client.get("/status/").content.decode()

    assert body["services"]["workers"]["sandbox"] == {
        "ok": False,
        "detail": "no worker answered",
        "hosts": [],
    }
    assert "No worker reported its sandboxes' protections: no worker answered." in page


def test_the_status_page_lists_the_workers_environments_with_pins_size_and_last_use(
    client, owner, worker, pinned_environment, celery_app_configured
):
    _, queue = celery_app_configured
    client.force_login(owner)
    pinned_environment.touch()  # a sandbox started from it just now

    body = client.get("/status.json").json()
    page = client.get("/status/").content.decode()

    listed = body["services"]["workers"]["environments"]["environments"]
    [entry] = [e for e in listed if e["key"] == pinned_environment.path.name]
    assert entry["requirements"] == ["scikit-learn==1.5.2"]
    assert entry["installed"] == ["scikit-learn==1.5.2"]  # the rest is the worker's
    assert entry["bytes"] == size_of(pinned_environment.path) > 10 * 1024**2
    assert entry["last_used"].startswith(
        datetime.fromtimestamp(last_used(pinned_environment), UTC).strftime("%Y-%m-%dT%H:%M")
    )
    assert any(name.startswith(f"{queue}-") for name in entry["workers"])
    row = re.search(rf'<tr data-environment="{entry["key"]}">.*?</tr>', page, re.S)
    assert row and "<td>scikit-learn==1.5.2</td>" in row.group(0)
    assert f"<td>{filesizeformat(entry['bytes'])}</td>" in row.group(0)
