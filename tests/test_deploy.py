"""The deployments (deploy/): production's settings, compose file, image and health checks,
and the demo that the local run (`make run`) sets up.

Production is the environment of deploy/.env.example with its secrets filled in, as an
operator would. manage.py and gunicorn run in subprocesses with only that environment,
so nothing of the test runner's leaks in. No S3, Redis or worker is needed for them.
The demo's tests call the functions run_local calls, on the test database and S3 server.
"""

import hashlib
import http.client
import json
import os
import re
import secrets
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
ENV_EXAMPLE = DEPLOY / ".env.example"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
SETTINGS = ROOT / "portal" / "settings.py"
BIN = Path(sys.executable).parent

# `NAME=value` sets a variable; `# NAME=value` documents its default.
ASSIGNMENT = re.compile(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")
SETTINGS_READ = re.compile(
    r"\b(?:env_str|env_bool|env_int|env_float|env_list|env_crontab|os\.getenv|os\.environ\.get)"
    r'\(\s*"([A-Z][A-Z0-9_]*)"'
)
COMPOSE_VARIABLE = re.compile(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)")
PINNED_IMAGE = re.compile(r"^[\w.\-/]+:[\w.\-]+@sha256:[0-9a-f]{64}$")
# The example leaves these empty: whoever copies it must make their own.
SECRETS = ("SECRET_KEY", "POSTGRES_PASSWORD", "REDIS_PASSWORD", "S3_SECRET_KEY")


def example_lines() -> list[tuple[bool, str, str]]:
    """(set, name, value) of each variable line of .env.example."""
    lines = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = ASSIGNMENT.match(line.strip())
        if match:
            lines.append((match.group(1) is None, match.group(2), match.group(3)))
    return lines


def production_env(tmp_path: Path, **changes: str) -> dict[str, str]:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    env.update({name: value for is_set, name, value in example_lines() if is_set})
    env.update({name: secrets.token_urlsafe(50) for name in SECRETS})
    # Only a SQLite database would use it; keeps a stray file out of the checkout.
    env["DROPSCORE_STATE_DIR"] = str(tmp_path / "state")
    env.update(changes)
    return env


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def compose_services() -> dict[str, dict]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


# --- settings -------------------------------------------------------------------


def test_production_settings_pass_the_deploy_checks(tmp_path):
    result = manage(production_env(tmp_path), "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_the_deploy_checks_flag_plain_http_in_production(tmp_path):
    env = production_env(tmp_path, SECURE_SSL_REDIRECT="false", SESSION_COOKIE_SECURE="false")
    result = manage(env, "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode != 0
    assert "security.W008" in result.stderr and "security.W012" in result.stderr


def test_the_example_ships_no_secret():
    values = {name: value for is_set, name, value in example_lines() if is_set}
    assert {name: values.get(name) for name in SECRETS} == dict.fromkeys(SECRETS, "")


def test_a_production_start_refuses_a_missing_secret_key(tmp_path):
    result = manage(production_env(tmp_path, SECRET_KEY=""), "check")
    assert result.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is off" in result.stderr


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("SCORES_MAINTENANCE_CRON", "0 25 * * *", "SCORES_MAINTENANCE_CRON must be a 5-field cron"),
        ("SCORES_MAINTENANCE_CRON", "daily", "SCORES_MAINTENANCE_CRON must be a 5-field cron"),
        ("SCORES_RETENTION_HOURS", "-1", "SCORES_RETENTION_HOURS must be 0 or more hours"),
    ],
)
def test_a_start_refuses_a_bad_table_maintenance_setting(tmp_path, name, value, message):
    result = manage(production_env(tmp_path, **{name: value}), "check")
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.parametrize("prefix", ["", "dropscore:/srv/portal:"])
def test_a_start_refuses_an_empty_redis_key_prefix_or_one_with_a_slash(tmp_path, prefix):
    result = manage(production_env(tmp_path, REDIS_KEY_PREFIX=prefix), "check")
    assert result.returncode != 0
    assert "REDIS_KEY_PREFIX must be a non-empty name without '/'" in result.stderr


def test_every_setting_read_from_the_environment_is_documented():
    read = set(SETTINGS_READ.findall(SETTINGS.read_text()))
    assert {"SECRET_KEY", "DATABASE_URL", "REDIS_URL", "SECURE_HSTS_SECONDS"} <= read
    documented = {name for _, name, _ in example_lines()}
    assert sorted(read - documented) == []


def test_every_variable_of_the_compose_file_is_documented():
    used = set(COMPOSE_VARIABLE.findall(COMPOSE.read_text()))
    assert {"POSTGRES_PASSWORD", "MODELS_BUCKET", "WORKER_SHM_SIZE"} <= used
    documented = {name for _, name, _ in example_lines()}
    assert sorted(used - documented) == []


# --- compose file and image -----------------------------------------------------------


def test_every_service_has_a_health_check():
    services = compose_services()
    assert {"postgres", "redis", "minio", "minio-init", "mailpit", "web", "worker", "beat"} <= set(
        services
    )
    unchecked = [
        name
        for name, service in services.items()
        if service.get("healthcheck", {}).get("disable")
        or service.get("healthcheck", {}).get("test") in (None, [], ["NONE"])
    ]
    assert unchecked == []


def test_third_party_images_are_pinned_by_digest():
    services = compose_services()
    # Not built here, and not the image built here (which the Spark services run).
    images = {
        name: s["image"]
        for name, s in services.items()
        if "build" not in s and "DROPSCORE_IMAGE" not in s["image"]
    }
    assert len(images) == 5
    assert {name: image for name, image in images.items() if not PINNED_IMAGE.match(image)} == {}
    base = re.search(r"^FROM (\S+)", DOCKERFILE.read_text(), re.MULTILINE).group(1)
    assert PINNED_IMAGE.match(base), base


def test_one_beat_and_workers_with_room_to_hand_chunks_to_sandboxes():
    services = compose_services()
    assert services["worker"]["command"][:4] == ["celery", "-A", "portal", "worker"]
    assert services["worker"]["shm_size"]
    assert services["beat"]["command"][:4] == ["celery", "-A", "portal", "beat"]
    assert "scale" not in services["beat"] and "deploy" not in services["beat"]
    # The sandbox needs no capability, so the app containers hold none.
    assert services["worker"]["cap_drop"] == ["ALL"]
    assert services["worker"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )


# --- the web container: collected static files served by gunicorn ----------------------


def image_command() -> list[str]:
    """The Dockerfile's CMD (the web server), as the image runs it."""
    text = DOCKERFILE.read_text().replace("\\\n", "")
    return json.loads(re.search(r"^CMD (\[.*\])$", text, re.MULTILINE).group(1))


def get(port: int, path: str, host: str, https: bool = True) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Host": host, **({"X-Forwarded-Proto": "https"} if https else {})}
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    response.body = response.read()
    return response


def healthcheck(env: dict[str, str], role: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "deploy/healthcheck.py", role],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def web_server(tmp_path):
    """gunicorn with the image's command and production settings, after collectstatic."""
    from deploy.services import free_port, port_open

    port = free_port()
    env = production_env(tmp_path, STATIC_ROOT=str(tmp_path / "static"), PORT=str(port))
    collected = manage(env, "collectstatic", "--noinput")
    assert collected.returncode == 0, collected.stdout + collected.stderr
    command = image_command()
    assert command[:2] == ["gunicorn", "portal.wsgi"]
    command = [str(BIN / "gunicorn"), *command[1:]]
    command[command.index("0.0.0.0:8000")] = f"127.0.0.1:{port}"
    log = tmp_path / "gunicorn.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 120
        while not port_open("127.0.0.1", port):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        yield port, env
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_production_serves_pages_over_https_with_hashed_static_files(web_server):
    port, env = web_server
    host = env["ALLOWED_HOSTS"].split(",")[0]

    page = get(port, "/login/", host)
    assert page.status == 200, page.body[:2000]
    assert page.getheader("Strict-Transport-Security").startswith("max-age=3600")
    stylesheet = re.search(rb'href="(/static/css/app\.[0-9a-f]{12}\.css)"', page.body)
    assert stylesheet, page.body[:2000]

    css = get(port, stylesheet.group(1).decode(), host)
    assert css.status == 200
    assert "immutable" in css.getheader("Cache-Control")

    plain = get(port, "/login/", host, https=False)
    assert plain.status == 301
    assert plain.getheader("Location") == f"https://{host}/login/"


def test_the_web_health_check_passes_on_a_served_app_and_fails_on_a_wrong_host(web_server):
    port, env = web_server
    healthy = healthcheck(env, "web")
    assert healthy.returncode == 0, healthy.stderr
    wrong = healthcheck({**env, "ALLOWED_HOSTS": "elsewhere.example"}, "web")
    assert wrong.returncode == 1
    assert "answered 400" in wrong.stderr


def test_the_beat_health_check_wants_a_recently_written_schedule(tmp_path):
    env = {**production_env(tmp_path), "BEAT_SCHEDULE": str(tmp_path / "celerybeat-schedule")}
    missing = healthcheck(env, "beat")
    assert missing.returncode == 1 and "no schedule file" in missing.stderr

    schedule = tmp_path / "celerybeat-schedule.db"
    schedule.write_bytes(b"")
    assert healthcheck(env, "beat").returncode == 0
    an_hour_ago = time.time() - 3600
    os.utime(schedule, (an_hour_ago, an_hour_ago))
    stale = healthcheck(env, "beat")
    assert stale.returncode == 1 and "last written" in stale.stderr


# --- the local run's demo (`make run`) ------------------------------------------------

# Small enough to set up in seconds; the local run makes 100,000 customers and 20,000 rows.
SMALL_DEMO = {"customers": 300, "training_rows": 1000}
YOUR_BUCKET = "your-features"


def write_your_table(root: Path) -> None:
    """A user's own table: two daily slices with their own columns, on days the demo also has."""
    from tests.factories import features

    for days_ago in (1, 0):
        features.write_feature_slice(root, date.today() - timedelta(days=days_ago), rows=50)


def folder_listing(root: Path) -> dict[str, tuple]:
    """Every folder and file under `root`, files with their size and sha256."""
    return {
        str(path.relative_to(root)): (
            (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
            if path.is_file()
            else ("folder",)
        )
        for path in sorted(root.rglob("*"))
    }


def bucket_listing(bucket: str) -> dict[str, tuple]:
    """Every object of `bucket` with its size and sha256."""
    from scoring.packages import storage

    s3 = storage.client()
    objects = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {
        item["Key"]: (
            item["Size"],
            hashlib.sha256(
                s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            ).hexdigest(),
        )
        for item in objects
    }


@pytest.fixture(params=["folder", "s3"])
def your_table(request, tmp_path, s3_server):
    """A user's own feature table, a local folder or an S3 prefix: (FEATURES_URI, a listing)."""
    write_your_table(tmp_path / "yours")
    if request.param == "folder":
        yield str(tmp_path / "yours"), lambda: folder_listing(tmp_path / "yours")
        return
    from scoring.packages import storage

    s3 = storage.client()
    s3.create_bucket(Bucket=YOUR_BUCKET)
    for path in (tmp_path / "yours").rglob("*.parquet"):
        s3.upload_file(str(path), YOUR_BUCKET, f"churn/{path.relative_to(tmp_path / 'yours')}")
    yield f"s3://{YOUR_BUCKET}/churn", lambda: bucket_listing(YOUR_BUCKET)
    for key in bucket_listing(YOUR_BUCKET):
        s3.delete_object(Bucket=YOUR_BUCKET, Key=key)
    s3.delete_bucket(Bucket=YOUR_BUCKET)


def demo_models():
    from scoring.models import Deployment

    return Deployment.objects.filter(owner__username="demo", slug="churn-demo")


def test_the_demo_never_writes_into_your_feature_table(your_table, tmp_path, bucket, db, capsys):
    from django.contrib.auth.models import User

    from deploy import run_local

    uri, listing = your_table
    before = listing()
    assert len(before) >= 2

    setup = run_local.set_up_demo(tmp_path / "state", uri, **SMALL_DEMO)

    assert listing() == before
    assert not demo_models().exists() and bucket() == []
    assert setup.deployment is None and setup.package is None
    assert not (tmp_path / "state" / "demo").exists()
    assert User.objects.filter(username="demo").exists()  # the portal can still be used
    said = capsys.readouterr().out
    assert f"using your feature table at {uri}; the demo model is not deployed" in said
    # No demo package to drag in: its features are not in your table, it would fail validation.
    banner = run_local.banner(setup, str(tmp_path / "mail"))
    assert "the demo model is not deployed" in banner and ".dill" not in banner


def test_without_a_table_of_yours_the_demo_table_is_in_the_state_folder_and_churn_demo_deployed(
    tmp_path, bucket, db
):
    from deploy import demo, run_local

    state = tmp_path / "state"
    setup = run_local.set_up_demo(state, None, **SMALL_DEMO)

    table = state / "demo" / "features"
    assert len(list(table.glob("dt=*/part-0.parquet"))) == 30
    # The outcomes known by today: all but the last LABEL_LAG_DAYS slices, for the same customers.
    labels = state / "demo" / "labels"
    assert run_local.labels_table(state) == labels  # what the processes' LABELS_URI names
    known = sorted(p.parent.name for p in labels.glob("dt=*/part-0.parquet"))
    assert known == sorted(p.name for p in table.glob("dt=*"))[: 30 - demo.LABEL_LAG_DAYS]
    first = pd.read_parquet(labels / known[0] / "part-0.parquet")
    assert list(first.columns) == ["entity_id", demo.TARGET] and len(first) == 300
    assert set(first[demo.TARGET]) == {0, 1}
    assert run_local.demo_table(state) == table  # what the worker's FEATURES_URI names
    deployment = demo_models().get()
    assert setup.deployment == deployment
    assert [v.file.name for v in deployment.versions.all()] == bucket()
    assert setup.package == state / "demo" / "retention-demo.dill" and setup.package.is_file()
    # The demo user manages a team of the demo: a package dropped with it as owner is the team's.
    from scoring.models import Membership

    membership = Membership.objects.get(user__username="demo")
    assert (membership.team.slug, membership.role) == ("retail-demo", "manager")


def test_a_demo_model_left_from_a_demo_run_is_paused_with_your_table_and_resumed_without(
    tmp_path, bucket, db
):
    from deploy import run_local

    state, yours = tmp_path / "state", tmp_path / "yours"
    write_your_table(yours)
    before = folder_listing(yours)
    run_local.set_up_demo(state, None, **SMALL_DEMO)

    run_local.set_up_demo(state, str(yours), **SMALL_DEMO)
    assert demo_models().get().status == "paused"  # it would fail every day on your table
    assert folder_listing(yours) == before

    run_local.set_up_demo(state, None, **SMALL_DEMO)
    assert demo_models().get().status == "active"


def test_the_local_run_prints_a_uri_without_its_password():
    from deploy import run_local

    assert (
        run_local.printable("postgresql://ana:s3cr%40t@db.bank:5432/dwh?table=features")
        == "postgresql://ana:***@db.bank:5432/dwh?table=features"
    )
    assert (
        run_local.printable("redis://:hunter2@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    )
    assert run_local.printable("s3://your-features/churn") == "s3://your-features/churn"
    assert run_local.printable("/data/features") == "/data/features"
