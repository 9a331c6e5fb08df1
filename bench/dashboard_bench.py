"""My models (whole, filtered, searched, page 20), a model page and the status page with
1,000 models of one user: queries and time.

Makes one user with 1,000 models and 30 daily runs each (30,000 runs; the latest runs
3 alert, 12 warning, 1 failed, the rest ok; the older ones mixed, one in 17 failed;
tests/factories/runs.py builds them), then requests each page through the real views
(Django's test client: URL routing, middleware, views, templates, the database) and
prints its SQL query count and its time. It does the same with 2 models and 10 runs
first: a page whose query count grew with the data asks once per model or per run.

    DATABASE_URL=postgresql://... .venv/bin/python bench/dashboard_bench.py
    .venv/bin/python bench/dashboard_bench.py --models 200 --runs 100   # 20,000 runs

The data lives in a throwaway database made beside DATABASE_URL's and dropped at the end.
The status page's checks that leave the process (Redis, S3, the workers ping, which ends
once every worker on the roll answers: scoring.engine.worker_roll) answer at once here:
this measures the database and the rendering.

Bound: each page makes at most the queries tests/test_dashboard.py allows it (the same
with 2 models as with 1,000) and answers within TIME_BOUND seconds (the median of
REPEATS requests). The data is ANALYZEd once built, as autovacuum does after a bulk
insert on a live database: without statistics PostgreSQL takes 1,000 models for 10.
"""

import argparse
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import throwaway_database, verdict  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

TIME_BOUND = 0.3  # seconds, the median of REPEATS requests of a page
REPEATS = 5
# (who asks, page): the owner's models whole, filtered, searched and paged, their poll and
# a model page; the status page and its JSON, the owner's and staff's (every user's).
PAGES = [
    ("owner", "/"),
    ("owner", "/?status=alert"),
    ("owner", "/?q=first"),
    ("owner", "/?page=20"),
    ("owner", "/?sort=status&page=10"),
    ("owner", "/models/status/?page=20"),
    ("owner", "/models/{id}/"),
    ("owner", "/status/"),
    ("owner", "/status.json"),
    ("staff", "/status.json?page=20"),
]


def answer_remote_checks_at_once() -> None:
    from django.utils import timezone

    from portal import health, status_views

    for name in status_views.REMOTE_CHECKS:
        status_views.REMOTE_CHECKS[name] = lambda name=name: f"{name} (not asked in the bench)"
    health.last_tick = lambda client=None: timezone.now() - timedelta(seconds=30)
    health.sandbox_protections = lambda: {}  # a broadcast that waits out its timeout


def measure(clients: dict, model_id: int) -> dict:
    """Per page: its query count and the median and worst time of REPEATS requests."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    results = {}
    for who, path in PAGES:
        url = path.format(id=model_id)
        client = clients[who]
        response = client.get(url)  # templates load once, not in the figures
        assert response.status_code == 200, (url, response.status_code)
        seconds = []
        for _ in range(REPEATS):
            with CaptureQueriesContext(connection) as queries:
                started = time.perf_counter()
                response = client.get(url)
                seconds.append(time.perf_counter() - started)
            assert response.status_code == 200, (url, response.status_code)
        results[(who, path)] = {
            "queries": len(queries),
            "median": statistics.median(seconds),
            "worst": max(seconds),
            "kb": len(response.content) // 1024,
        }
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=30, help="runs per model (at least 10)")
    args = parser.parse_args()

    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client
    from django.test.utils import setup_test_environment

    from scoring.models import ScoringRun
    from tests.factories.runs import make_fleet, make_runs
    from tests.test_dashboard import QUERY_BOUNDS

    setup_test_environment()  # the test client's host is allowed, mail stays in memory
    answer_remote_checks_at_once()
    with throwaway_database("bench_dashboard"):
        owner = User.objects.create(username="bench-owner", email="owner@example.com")
        staff = User.objects.create(username="bench-staff", is_staff=True)
        clients = {"owner": Client(), "staff": Client()}
        clients["owner"].force_login(owner)
        clients["staff"].force_login(staff)

        # One alerts, one failed: every list of the small case has rows, as the large one.
        first = [m for models in make_fleet(owner, 2, 1, 0, 1, "first").values() for m in models]
        make_runs(first, 8, days_back=2)
        small = measure(clients, first[0].id)
        small_runs = ScoringRun.objects.count()

        make_runs(first, args.runs - 10, days_back=10)
        more = make_fleet(owner, args.models - 2, prefix="more")
        make_runs([m for models in more.values() for m in models], args.runs - 2, days_back=2)
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
        large = measure(clients, first[0].id)
        runs = ScoringRun.objects.count()

    print(
        f"\npages with {args.models} models and {runs:,} runs ({connection.vendor}), "
        f"median of {REPEATS}; queries with 2 models and {small_runs} runs in brackets"
    )
    broken = []
    for who, path in PAGES:
        few, many = small[(who, path)], large[(who, path)]
        bound = QUERY_BOUNDS[path.split("?")[0]]
        print(
            f"  {path:<24} as {who:<5} {many['queries']:>2} queries ({few['queries']}), "
            f"bound {bound}; {1000 * many['median']:>4.0f} ms "
            f"(worst {1000 * many['worst']:.0f} ms), {many['kb']} KB"
        )
        if many["queries"] > bound or many["queries"] != few["queries"]:
            broken.append(f"{path}: {many['queries']} queries ({few['queries']} with less data)")
        if many["median"] > TIME_BOUND:
            broken.append(f"{path}: {1000 * many['median']:.0f} ms")
    print(f"  bound: {1000 * TIME_BOUND:.0f} ms a page; queries as above, whatever the data")
    return verdict(broken)


if __name__ == "__main__":
    sys.exit(main())
