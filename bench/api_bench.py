"""The list of models (`GET /api/v1/models/?limit=50`) and "My models" (`GET /`) of a user in
five teams of 200 models each, under load, against one run's page (`GET /api/v1/runs/<id>/`)
on the same server: requests a second, p50 and p99, and their ratios, on PostgreSQL and on
SQLite.

For each database it makes a throwaway database (PostgreSQL: beside DATABASE_URL's, or
postgresql://postgres@127.0.0.1:5432/postgres; SQLite: a file in a temporary folder),
migrates it and builds, with bulk inserts: a user in TEAMS teams of MODELS models each
(role member), a few models of their own, and a team of MODELS models they are not in;
each model with VERSIONS validated versions whose `package` is what validation stores for
a scikit-learn pipeline of 50 features (features, importance, environment, input types,
meta: about 5 KB, made once here by scoring.packages.contract as the sandbox makes it),
its latest version the champion, and RUNS daily runs with their quality results.

Then it starts gunicorn as deploy/Dockerfile's CMD runs it (gthread, 4 threads, timeout
120, --worker-tmp-dir /dev/shm, the access log on stdout, here a file) with
WEB_CONCURRENCY=2 (deploy/.env.example's), on 127.0.0.1, and runs wrk (Debian's 4.1:
`apt-get install -y wrk`) with bench/online_load.lua, which counts the answers by status:
`wrk -t2 -c16 -d10s` against each route in turn after a 5-second warm-up of each, the API routes
with `Authorization: Token <key>`, the page with the session cookie of a signed-in user.

    .venv/bin/python bench/api_bench.py                      # PostgreSQL and SQLite
    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/bench_h3 .venv/bin/python bench/api_bench.py
    .venv/bin/python bench/api_bench.py --databases sqlite --seconds 5

Only ratios measured in the same run compare on a shared machine.

Bound: on each database the list answers at least LIST_RATE requests a second with a p99
under LIST_P99_MS, every answer a 200.
"""

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import database_url_for, throwaway_database, verdict  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

LIST_RATE = 150  # requests a second of GET /api/v1/models/?limit=50, at least
LIST_P99_MS = 300
LUA = ROOT / "bench" / "online_load.lua"
WEB_CONCURRENCY = 2  # deploy/.env.example's
WARM_UP_SECONDS = 5
TEAMS, MODELS, OWN, VERSIONS, RUNS = 5, 200, 5, 2, 3
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
ROUTES = {  # name: (path, how it signs in)
    "list": ("/api/v1/models/?limit=50", "token"),
    "run": ("/api/v1/runs/{run_id}/", "token"),
    "page": ("/", "session"),
}


# --- the data ---------------------------------------------------------------------------


def realistic_package() -> dict:
    """What validation stores in PackageVersion.package for a scikit-learn pipeline of 50
    features: the contract's summary, the environment it was made in, its importance."""
    import io

    import dill
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from scoring.packages import contract, environment
    from scoring.sandbox import importance

    features = [f"f{i:02d}_{kind}" for i, kind in enumerate(["spend_3m", "calls_30d"] * 25)]
    rng = np.random.default_rng(7)
    frame = pd.DataFrame(rng.normal(size=(400, 50)), columns=features)
    model = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression())])
    model.fit(frame, (frame.iloc[:, 0] + frame.iloc[:, 1] > 0).astype(int))
    raw = {
        "model": model,
        "features": features,
        "params": {"method": "predict_proba", "psi_warn": 0.1, "psi_alert": 0.25},
        "meta": {
            "author": "data-science@example.com",
            "training_window": "2025-01-01..2025-06-30",
            "gini_oot": 0.412,
            "description": "Churn in the next 90 days of a retail customer.",
        },
        "reference_scores": rng.random(5000),
    }
    modules = environment.referenced_modules(io.BytesIO(dill.dumps(raw, recurse=True)))
    raw["environment"] = environment.made_here(modules)
    package = contract.parse_package(raw).to_json()
    package["environment"] = environment.compare(raw["environment"], modules, [])
    package["importance"] = importance.measure(
        model, features, frame, lambda rows: model.predict_proba(rows)[:, 1]
    )
    package["input_types"] = dict.fromkeys(features, "FP64")
    return package


def build(package: dict) -> dict:
    """The user, their teams and models, an outsiders' team; returns the user and a run."""
    from django.contrib.auth.models import User
    from django.utils import timezone

    from scoring.models import Deployment, Membership, PackageVersion, ScoringRun, Team
    from tests.factories.runs import quality

    user = User.objects.create(username="bench-member", email="member@example.com")
    outsider = User.objects.create(username="bench-outsider")
    teams = Team.objects.bulk_create(
        Team(name=f"Team {i}", slug=f"team-{i}") for i in range(TEAMS + 1)
    )
    Membership.objects.bulk_create(
        [Membership(team=team, user=user, role="member") for team in teams[:TEAMS]]
        + [Membership(team=teams[-1], user=outsider, role="manager")]
    )
    now = timezone.now()
    owners = [{"owner": user} for _ in range(OWN)] + [
        {"team": team} for team in teams for _ in range(MODELS)
    ]
    deployments = Deployment.objects.bulk_create(
        (
            Deployment(
                name=f"churn-{i:04d}",
                slug=f"churn-{i:04d}",
                email="member@example.com",
                next_run_at=now + timedelta(hours=6),
                **owner,
            )
            for i, owner in enumerate(owners)
        ),
        batch_size=1000,
    )
    versions = PackageVersion.objects.bulk_create(
        (
            PackageVersion(
                deployment=d,
                number=n,
                file=f"{d.owner_key}/{d.slug}/v{n}.dill",
                filename=f"{d.slug}-v{n}.dill",
                size=2_400_000 + n,
                sha256=secrets.token_hex(32),
                state=PackageVersion.State.VALID,
                message="smoke test: scored 200 rows of slice 2026-12-06",
                package=package,
                uploaded_at=now - timedelta(days=30 - n),
                validated_at=now - timedelta(days=30 - n),
            )
            for d in deployments
            for n in range(1, VERSIONS + 1)
        ),
        batch_size=500,
    )
    latest = {v.deployment_id: v for v in versions if v.number == VERSIONS}
    for d in deployments:
        d.champion = latest[d.id]
    Deployment.objects.bulk_update(deployments, ["champion"], batch_size=1000)
    today = timezone.localdate()
    runs = ScoringRun.objects.bulk_create(
        (
            ScoringRun(
                deployment=d,
                version=latest[d.id],
                date=today - timedelta(days=age),
                status=ScoringRun.Status.SUCCEEDED,
                attempts=1,
                rows=100_000,
                quality=quality(0.03 + 0.01 * age, 0.52),
                quality_status="ok",
                queued_at=now - timedelta(days=age, minutes=5),
                started_at=now - timedelta(days=age, minutes=4),
                finished_at=now - timedelta(days=age),
            )
            for d in deployments
            for age in range(RUNS)
        ),
        batch_size=1000,
    )
    mine = next(run for run in reversed(runs) if run.deployment.team in teams[:TEAMS])
    return {"user": user, "run_id": mine.id}


def credentials(user) -> dict[str, str]:
    """The header each way of signing in sends: a token, a session cookie."""
    from django.conf import settings
    from django.test import Client
    from rest_framework.authtoken.models import Token

    client = Client()
    client.force_login(user)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    return {
        "token": f"Authorization: Token {Token.objects.create(user=user).key}",
        "session": f"Cookie: {settings.SESSION_COOKIE_NAME}={cookie}",
    }


# --- the server and the load -----------------------------------------------------------


def start_server(port: int, env: dict, log: Path) -> subprocess.Popen:
    """gunicorn as deploy/Dockerfile's CMD runs it, on 127.0.0.1."""
    from deploy import services

    command = [
        str(services.BIN / "gunicorn"),
        "portal.wsgi",
        "--bind",
        f"127.0.0.1:{port}",
        "--worker-class",
        "gthread",
        "--threads",
        "4",
        "--timeout",
        "120",
        "--worker-tmp-dir",
        "/dev/shm",
        "--access-logfile",
        "-",
        "--no-control-socket",
    ]
    with open(log, "ab") as out:
        server = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **env, "WEB_CONCURRENCY": str(WEB_CONCURRENCY)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    services.wait_for(lambda: services.port_open("127.0.0.1", port), "gunicorn", 60, server, log)
    return server


def wrk(url: str, header: str, seconds: int, connections: int) -> dict:
    """One closed-loop wrk run: requests a second, p50 and p99 (ms), answers by status."""
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
    command += ["-s", str(LUA), "-H", header, url]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    result = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
    ok = sum(n for code, n in result["statuses"].items() if code == "200")
    return {
        "per_second": result["requests"] / result["seconds"],
        "p50_ms": result["p50_ms"],
        "p99_ms": result["p99_ms"],
        "statuses": result["statuses"],
        "not_200": result["requests"] - ok,
    }


def measure_one(args) -> dict:
    """In a process of its own (Django is set up once a process): one database's figures."""
    import django

    # The server's key: a session's hash of the user's password is signed with it.
    os.environ["SECRET_KEY"] = secrets.token_urlsafe(32)
    django.setup()
    from django.db import connection

    with throwaway_database("bench_api") as name:
        started = time.perf_counter()
        made = build(realistic_package())
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE")  # as autovacuum does after a bulk insert
        headers = credentials(made["user"])
        built = time.perf_counter() - started
        connection.close()  # the server's processes read it now
        from deploy import services

        port = services.free_port()
        log = Path(args.work) / f"gunicorn-{connection.vendor}.log"
        server = start_server(
            port,
            {
                "DATABASE_URL": database_url_for(name),
                "DEBUG": "false",
                "ALLOWED_HOSTS": "127.0.0.1",
                "SECURE_SSL_REDIRECT": "false",  # plain http on loopback
            },
            log,
        )
        try:
            routes = {
                route: (f"http://127.0.0.1:{port}{path.format(run_id=made['run_id'])}", signed)
                for route, (path, signed) in ROUTES.items()
                if route in args.routes
            }
            # Every route first, till each process has answered it: a process's first
            # request imports and connects for seconds on a busy machine.
            for url, signed in routes.values():
                wrk(url, headers[signed], WARM_UP_SECONDS, args.connections)
            results = {
                route: wrk(url, headers[signed], args.seconds, args.connections)
                for route, (url, signed) in routes.items()
            }
        finally:
            server.terminate()
            server.wait(timeout=30)
    failed = any(r["not_200"] for r in results.values())
    return {
        "vendor": connection.vendor,
        "built_seconds": built,
        "routes": results,
        "log_tail": log.read_text(errors="replace")[-3000:] if failed else "",
    }


def report(figures: list[dict], args) -> int:
    models = TEAMS * MODELS + OWN
    print(
        f"\na user in {TEAMS} teams of {MODELS} models and {OWN} of their own ({models} models, "
        f"{VERSIONS} versions and {RUNS} runs each); gunicorn gthread {WEB_CONCURRENCY} x 4, "
        f"wrk -t2 -c{args.connections} -d{args.seconds}s"
    )
    broken = []
    for found in figures:
        routes = found["routes"]
        print(f"  {found['vendor']} (data built in {found['built_seconds']:.0f} s)")
        for route, r in routes.items():
            path = ROUTES[route][0]
            ratio = (
                f"  {r['per_second'] / routes['run']['per_second']:.2f} x the run's"
                if "run" in routes
                else ""
            )
            print(
                f"    {path:<26} {r['per_second']:>6.1f} req/s  p50 {r['p50_ms']:>6.1f} ms  "
                f"p99 {r['p99_ms']:>6.1f} ms{ratio}"
            )
            if r["not_200"]:
                broken.append(f"{found['vendor']} {path}: {r['statuses']}")
        if found["log_tail"]:
            print(f"  the server's log ends:\n{found['log_tail']}")
        listed = routes.get("list")
        if listed and listed["per_second"] < LIST_RATE:
            broken.append(f"{found['vendor']} list: {listed['per_second']:.0f} req/s")
        if listed and listed["p99_ms"] >= LIST_P99_MS:
            broken.append(f"{found['vendor']} list: p99 {listed['p99_ms']:.0f} ms")
    print(f"  bound: the list at least {LIST_RATE} req/s, p99 under {LIST_P99_MS} ms")
    return verdict(broken)


def collect_static(folder: Path) -> None:
    """The hashed, compressed static files the pages link to, as the image's build makes them
    (without them a page with DEBUG off is a 500)."""
    env = {
        **os.environ,
        "DEBUG": "false",
        "SECRET_KEY": "collectstatic",
        "STATIC_ROOT": str(folder),
    }
    command = [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"]
    subprocess.run(command, cwd=ROOT, env=env, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--databases", default="postgresql,sqlite")
    parser.add_argument("--routes", default=",".join(ROUTES), help="of: list, run, page")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # the child
    parser.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.routes = args.routes.split(",")
    if args.one:
        print(json.dumps(measure_one(args)))
        return 0
    if not shutil.which("wrk"):
        raise SystemExit("the bench needs wrk: apt-get install -y wrk (Debian's wrk 4.1)")
    figures = []
    with tempfile.TemporaryDirectory(prefix="dropscore-api-bench-") as work:
        collect_static(Path(work) / "static")
        for database in args.databases.split(","):
            url = os.environ.get("DATABASE_URL", "")
            if database == "sqlite":
                url = f"sqlite:///{work}/db.sqlite3"
            elif not url.startswith("postgres"):
                url = DEFAULT_POSTGRES
            print(f"{database}: building the data and measuring ...", flush=True)
            env = {
                **os.environ,
                "DATABASE_URL": url,
                "DROPSCORE_STATE_DIR": f"{work}/state",
                "STATIC_ROOT": f"{work}/static",
            }
            child = [sys.executable, __file__, "--one", "--work", work]
            child += ["--routes", ",".join(args.routes), "--seconds", str(args.seconds)]
            child += ["--connections", str(args.connections)]
            done = subprocess.run(child, env=env, capture_output=True, text=True)
            if done.returncode:
                print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
                return 2
            figures.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return report(figures, args)


if __name__ == "__main__":
    sys.exit(main())
