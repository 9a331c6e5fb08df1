"""`make run`: the whole portal on this machine with a demo, no Docker, no manual services.

Starts SeaweedFS (S3) unless one answers at S3_ENDPOINT_URL, Redis unless one
answers at REDIS_URL, then the web server, a Celery worker, Celery beat and a serving
process of online scoring; makes a demo user, a demo feature table and a demo package
to drag in. Ctrl-C stops all that it started.

Everything the demo writes lives in the state folder and the portal's own buckets. A
FEATURES_URI set by the user names their own table: it is only read, and the demo
model, whose features are not in it, is not deployed.
"""

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse, urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

from deploy import demo, services  # noqa: E402

if TYPE_CHECKING:
    from scoring.models import Deployment

STATE = Path(os.environ.get("DROPSCORE_STATE_DIR", ROOT / ".dropscore"))
PORT = int(os.environ.get("PORT", "8000"))
ONLINE_PORT = int(os.environ.get("ONLINE_PORT", "8001"))
# The links in the emails go where the portal runs; the Online card's URLs where models answer.
os.environ.setdefault("SITE_URL", f"http://127.0.0.1:{PORT}")
os.environ.setdefault("ONLINE_URL", f"http://127.0.0.1:{ONLINE_PORT}")
DEMO_USER = "demo"
DEMO_MODEL = "churn-demo"
DEMO_TEAM = "retail-demo"
DEMO_CUSTOMERS = 100_000
DEMO_TRAINING_ROWS = 20_000
BACKFILL_DAYS = 7


def say(text: str) -> None:
    print(f"[dropscore] {text}", flush=True)


def stop_on_signal(signum, frame):
    raise KeyboardInterrupt


def main() -> int:
    # Ctrl-C and SIGTERM both stop what this started (a background shell ignores SIGINT).
    signal.signal(signal.SIGINT, stop_on_signal)
    signal.signal(signal.SIGTERM, stop_on_signal)
    STATE.mkdir(parents=True, exist_ok=True)
    started: list[services.Service] = []
    processes: list[subprocess.Popen] = []
    user_table = user_feature_table()
    env = {
        "FEATURES_URI": user_table or str(demo_table(STATE)),
        # The demo's outcomes go with the demo's table; with a table of yours, your LABELS_URI.
        "LABELS_URI": os.environ.get("LABELS_URI", "") if user_table else str(labels_table(STATE)),
        # Report and failure emails land as files to read, unless a mail server is set up.
        "EMAIL_BACKEND": os.environ.get(
            "EMAIL_BACKEND", "django.core.mail.backends.filebased.EmailBackend"
        ),
        "EMAIL_FILE_PATH": os.environ.get("EMAIL_FILE_PATH", str(STATE / "mail")),
    }
    try:
        s3_url = os.environ.get("S3_ENDPOINT_URL", "http://127.0.0.1:8333")
        access, secret = (
            os.environ.get("S3_ACCESS_KEY", "dropscore"),
            os.environ.get("S3_SECRET_KEY", "dropscore-secret"),
        )
        if services.s3_ready(s3_url, access, secret):
            say(f"using the S3 server at {s3_url}")
        else:
            say("starting SeaweedFS (S3) ...")
            s3 = services.start_seaweedfs(
                STATE, access, secret, s3_port=urlparse(s3_url).port or 8333
            )
            started.append(s3)
            say(f"SeaweedFS S3 on {s3.url} (log {s3.log})")
        env["S3_ENDPOINT_URL"] = s3_url

        redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        if services.redis_reachable(redis_url):
            say(f"using the Redis server at {printable(redis_url)}")
        else:
            redis = services.start_redis(STATE)
            started.append(redis)
            redis_url = redis.url
            say(f"no Redis at 127.0.0.1:6379: started one on {redis_url} (log {redis.log})")
        env["REDIS_URL"] = redis_url
        os.environ.update(env)

        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        from scoring.packages import storage

        storage.ensure_buckets()
        setup = set_up_demo(STATE, user_table)

        python = sys.executable
        # With ENGINE=spark one process holds the Spark session (a JVM) and Spark itself
        # scores on every core: a second process would start a second JVM.
        concurrency = "1" if os.environ.get("ENGINE") == "spark" else "2"
        processes.append(services.celery("worker", env, STATE / "worker.log", "-c", concurrency))
        processes.append(
            services.celery(
                "beat", env, STATE / "beat.log", "-s", str(STATE / "celerybeat-schedule")
            )
        )
        with open(STATE / "web.log", "ab") as log:
            web = subprocess.Popen(
                [python, "manage.py", "runserver", f"127.0.0.1:{PORT}", "--noreload"],
                cwd=ROOT,
                # runserver serves each request in a thread of its own: a persistent
                # connection would outlive it, and a thousand uploads exhaust PostgreSQL.
                env={**os.environ, **env, "CONN_MAX_AGE": "0"},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        processes.append(web)
        online = services.serve_online(env, STATE / "online.log", ONLINE_PORT)
        processes.append(online.process)
        wait_for_web()
        if setup.deployment is not None:
            score_demo_model(setup.deployment)
        print(banner(setup, env["EMAIL_FILE_PATH"]), flush=True)
        while all(p.poll() is None for p in processes):
            time.sleep(1)
        say("a process stopped; see the logs in .dropscore/")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        say("stopping ...")
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        for service in started:
            service.stop()


def user_feature_table() -> str | None:
    """The feature table the user named, if any: theirs to read, never the demo's to write.

    Read before run_local sets FEATURES_URI for its processes; blank names none, as in the
    settings.
    """
    return os.environ.get("FEATURES_URI", "").strip() or None


def labels_table(state: Path) -> Path:
    """The demo's ground truth (LABELS_URI), beside its feature table."""
    return state / "demo" / "labels"


def demo_table(state: Path) -> Path:
    """The demo's feature table: in the state folder, beside the rest of the demo, so that
    `make clean` removes it and no folder of the user's ever receives it."""
    return state / "demo" / "features"


def printable(uri: str) -> str:
    """The URI with its password masked (postgresql://ana:***@db/...), fit for a terminal."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def demo_user(state: Path) -> str:
    """The demo account; its password is kept in the state folder so it stays the same."""
    from django.contrib.auth.models import User

    password_file = state / "demo-password"
    state.mkdir(parents=True, exist_ok=True)
    if not password_file.exists():
        password_file.write_text(secrets.token_urlsafe(9))
    password = password_file.read_text().strip()
    user, _ = User.objects.get_or_create(username=DEMO_USER, defaults={"email": "demo@localhost"})
    user.set_password(password)
    user.save()
    demo_team(user)
    return password


def demo_team(user) -> None:
    """A team the demo user manages: a package dropped with it as the owner is the team's."""
    from scoring.models import Membership, Team

    team, _ = Team.objects.get_or_create(slug=DEMO_TEAM, defaults={"name": DEMO_TEAM})
    Membership.objects.get_or_create(team=team, user=user, defaults={"role": "manager"})


@dataclass
class Demo:
    """What the demo set up: the login, the model to score once the worker runs, the package to
    drag in; with the user's own table, only the login."""

    password: str
    user_table: str | None = None
    deployment: "Deployment | None" = None
    package: Path | None = None


def set_up_demo(
    state: Path,
    user_table: str | None,
    customers: int = DEMO_CUSTOMERS,
    training_rows: int = DEMO_TRAINING_ROWS,
) -> Demo:
    """The demo login and, unless the user named a feature table of their own, the demo's
    table, packages and deployed model.

    The user's table is only ever read: nothing is written into it. The demo packages'
    features are not its columns, so the demo model would fail validation and every daily
    run there: it is not deployed (one left from an earlier demo run is paused), and the
    second package, which would fail the same way, is not offered.
    """
    password = demo_user(state)
    if user_table:
        say(f"using your feature table at {printable(user_table)}; the demo model is not deployed")
        pause_demo_model()
        return Demo(password, user_table=user_table)
    say(f"writing the demo feature table (30 daily slices of {customers:,} customers) ...")
    demo.make_feature_table(demo_table(state), customers)
    demo.make_labels_table(labels_table(state), customers)
    deployed, package = make_demo_packages(state / "demo", training_rows)
    return Demo(password, deployment=deploy_demo_model(deployed), package=package)


def make_demo_packages(folder: Path, training_rows: int) -> tuple[Path, Path]:
    """The model the demo deploys and the second one to drag in; trained once, then kept."""
    deployed, package = folder / "churn-demo.dill", folder / "retention-demo.dill"
    folder.mkdir(parents=True, exist_ok=True)
    if not deployed.exists():
        say("training the demo CatBoost packages ...")
        demo.make_demo_package(deployed, customers=training_rows)
        demo.make_demo_package(
            package, "retention-demo", demo.RETENTION_FEATURES, customers=training_rows
        )
    return deployed, package


def demo_deployment() -> "Deployment | None":
    from scoring.models import Deployment

    return Deployment.objects.filter(
        owner__username=DEMO_USER, team__isnull=True, slug=DEMO_MODEL
    ).first()


def deploy_demo_model(path: Path) -> "Deployment":
    """The demo user's churn model, deployed once; the worker validates it when it starts.

    Paused by a run on the user's own table, it is resumed: on the demo table it scores.
    """
    from django.contrib.auth.models import User

    from scoring.packages import deployments

    deployment = demo_deployment()
    if deployment is None:
        say(f"deploying {DEMO_MODEL} ...")
        user = User.objects.get(username=DEMO_USER)
        with open(path, "rb") as file:
            version = deployments.deploy(
                user, file, path.name, path.stat().st_size, name=DEMO_MODEL
            )
        return version.deployment
    if deployment.status == deployment.Status.PAUSED:
        say(f"resuming {DEMO_MODEL}: it scores the demo table again")
        deployment = deployments.update(deployment, status=deployment.Status.ACTIVE)
    return deployment


def pause_demo_model() -> None:
    """A demo model left from an earlier demo run would fail every day on the user's table,
    with an email each time: it waits, paused, for the next run on the demo table."""
    from scoring.packages import deployments

    deployment = demo_deployment()
    if deployment is not None and deployment.status == deployment.Status.ACTIVE:
        deployments.update(deployment, status=deployment.Status.PAUSED)
        say(
            f"paused {DEMO_MODEL}, left from an earlier demo run: its features are not in your table"
        )


def score_demo_model(deployment: "Deployment") -> None:
    """The demo model validated and scored on the last days, so its page has a history."""
    from scoring.models import ScoringRun
    from scoring.runs import dispatch, lifecycle

    if not wait(lambda: deployment.versions.filter(state="valid").exists(), 120):
        say("churn-demo did not validate; see worker.log")
        return
    if deployment.runs.filter(status=ScoringRun.Status.SUCCEEDED).exists():
        return
    deployment.refresh_from_db()  # validation made its version the champion meanwhile
    # A week of history, a day at a time (each run is checked against the day before),
    # so the model page has charts and the last day shows the promotion's drift.
    say(f"scoring churn-demo on the last {BACKFILL_DAYS} days (100,000 customers each) ...")
    for offset in range(BACKFILL_DAYS - 1, -1, -1):
        run = lifecycle.request_run(deployment, date.today() - timedelta(days=offset))
        dispatch.send_batch([run.id])
        finished = wait(
            lambda run=run: (
                ScoringRun.objects.get(id=run.id).status in ("succeeded", "failed", "retrying")
            ),
            300,
        )
        run.refresh_from_db()
        if not finished or run.status != ScoringRun.Status.SUCCEEDED:
            say(f"churn-demo run {run.id} for {run.date}: {run.status} {run.error}")
            return
    wait(lambda: ScoringRun.objects.get(id=run.id).quality is not None, 60)
    run.refresh_from_db()
    say(f"churn-demo scored {run.rows:,} rows for {run.date}: quality {run.quality_status}")
    check_ground_truth()


def check_ground_truth() -> None:
    """The hourly ground-truth pass once now, so the demo's matured runs have their Gini."""
    from django.utils import timezone

    from scoring.engine import features, scores
    from scoring.quality import ground_truth
    from scoring.reports import matured

    measured = ground_truth.check_matured(
        timezone.now(), features.labels_from_settings(), scores.run_scores, matured.announce
    )
    say(f"churn-demo: {measured} runs matured (their outcomes are known): Gini on its page")


def banner(setup: Demo, mail_folder: str) -> str:
    """What a new user reads once all runs: where to log in and what to try first."""
    if setup.user_table is None:
        model = f"{DEMO_MODEL} is deployed on a daily schedule and scored on the last {BACKFILL_DAYS} days."
        try_this = f"""Drag this second demo package onto "My models":
              {setup.package}"""
    else:
        model = f"Features come from your table at {printable(setup.user_table)}; the demo model is not deployed."
        try_this = f"""Drag a package of your own onto "My models": its features must be columns of
  your table (how to make one: http://127.0.0.1:{PORT}/help/)."""
    return f"""
  Dropscore is running: http://127.0.0.1:{PORT}/
  Log in as   {DEMO_USER} / {setup.password}
  {model}
  Report emails go to {mail_folder}/ (set EMAIL_BACKEND and EMAIL_HOST to send them).
  Models switched online (the Online card of a model's page) answer on {os.environ["ONLINE_URL"]}/
  {try_this}
  Logs in {STATE}/ (web.log, worker.log, beat.log, online.log). Ctrl-C stops everything.
"""


def wait(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(1)
    return False


def wait_for_web() -> None:
    deadline = time.monotonic() + 30
    while not services.port_open("127.0.0.1", PORT):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the web server did not start; see {STATE / 'web.log'}")
        time.sleep(0.3)


if __name__ == "__main__":
    sys.exit(main())
