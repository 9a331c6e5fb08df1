"""One tick with 1,000 models due at once: its time and its SQL queries, against a bound.

Makes 1,000 active deployments with a valid version each (rows in the database, as the
tick sees them; four schedules in four time zones, ten past runs each), all due now,
and runs the minutely task `scoring.tasks.tick` once. It checks what a user would:
every model got exactly one queued run, all of them in one batch (models due at one
moment are scored together), one message on the broker, every next run moved on, and a
second tick right after creates nothing. It does the same with 100 models first, so the
query count shows whether the tick asks the database once per model.

    DATABASE_URL=postgresql://... .venv/bin/python bench/tick_bench.py
    .venv/bin/python bench/tick_bench.py --models 5000

The data lives in a throwaway database made beside DATABASE_URL's and dropped at the
end: real models are never dispatched. Nothing is scored (no worker reads the queue).

Bound: the tick takes under TIME_BOUND seconds with 1,000 due models, and its query
count is the same with 100 and 1,000 but for the extra statements of rows written in
batches (1,000 rows a statement on PostgreSQL; SQLite's cap of 999 parameters a
statement makes its batches smaller): not one query per model.
"""

import argparse
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import throwaway_database, verdict  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

TIME_BOUND = 2.0  # seconds for one tick with 1,000 due models
# (schedule, time zone) of the due models, a quarter each.
SCHEDULES = [
    ("daily", "UTC"),
    ("0 6 * * 1-5", "Europe/Berlin"),
    ("weekly", "America/New_York"),
    ("15 4 * * *", "Asia/Tokyo"),
]
PAST_RUNS = 10


def make_due_models(owner, count: int, prefix: str) -> list:
    from django.utils import timezone

    from scoring.models import Deployment
    from tests.factories.runs import make_models, make_runs

    models = []
    for index, (schedule, zone) in enumerate(SCHEDULES):
        share = count // len(SCHEDULES) + (index < count % len(SCHEDULES))
        models += make_models(
            owner, share, prefix=f"{prefix}-{index}", schedule=schedule, timezone=zone
        )
    # Past runs end two days ago: in no time zone is that the date a model is due for now.
    make_runs(models, PAST_RUNS, days_back=2)
    Deployment.objects.filter(id__in=[m.id for m in models]).update(
        next_run_at=timezone.now() - timedelta(seconds=30)
    )
    return models


def queued_messages(queue: str) -> int:
    import redis
    from django.conf import settings

    return redis.Redis.from_url(settings.REDIS_URL).llen(queue)


def timed_tick() -> tuple[float, int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from scoring import tasks

    with CaptureQueriesContext(connection) as queries:
        started = time.perf_counter()
        tasks.tick()
        seconds = time.perf_counter() - started
    return seconds, len(queries)


def measure(owner, count: int, queue: str) -> dict:
    """Make `count` due models, tick once, check the runs and the batch; tick again."""
    from django.utils import timezone

    from scoring.models import Deployment, ScoringRun

    models = make_due_models(owner, count, prefix=f"due{count}")
    ids = [m.id for m in models]
    messages_before = queued_messages(queue)
    seconds, queries = timed_tick()
    runs = ScoringRun.objects.filter(deployment_id__in=ids, status=ScoringRun.Status.QUEUED)
    per_model = set(runs.values_list("deployment_id", flat=True))
    batches = set(runs.values_list("batch_id", flat=True))
    moved_on = Deployment.objects.filter(id__in=ids, next_run_at__gt=timezone.now()).count()
    messages = queued_messages(queue) - messages_before
    again_seconds, again_queries = timed_tick()
    return {
        "models": count,
        "seconds": seconds,
        "queries": queries,
        "runs": runs.count(),
        "models_with_a_run": len(per_model),
        "batches": len(batches - {None}),
        "unbatched": None in batches,
        "moved_on": moved_on,
        "messages": messages,
        "runs_after_second_tick": ScoringRun.objects.filter(
            deployment_id__in=ids, status=ScoringRun.Status.QUEUED
        ).count(),
        "again_seconds": again_seconds,
        "again_queries": again_queries,
    }


def write_statements(count: int) -> int:
    """Statements of the tick's batched work for `count` due models: next runs moved on
    (bulk_update), runs created (bulk_create), and versions read (in_bulk), in batches
    the database allows."""
    from django.db import connection

    from scoring.models import ScoringRun
    from scoring.runs.dispatch import BULK_ROWS

    rows = [None] * count
    fields = [f for f in ScoringRun._meta.concrete_fields if not f.primary_key]
    insert = min(BULK_ROWS, connection.ops.bulk_batch_size(fields, rows))
    update = min(BULK_ROWS, connection.ops.bulk_batch_size(["pk", "pk", "next_run_at"], rows))
    read = connection.features.max_query_params or max(count, 1)
    return -(-count // insert) + -(-count // update) + -(-count // read)


def failures(small: dict, large: dict) -> list[str]:
    broken = []
    for result in (small, large):
        n = result["models"]
        if not (result["runs"] == result["models_with_a_run"] == n):
            broken.append(
                f"{n} due models made {result['runs']} runs for "
                f"{result['models_with_a_run']} models"
            )
        if result["batches"] != 1 or result["unbatched"]:
            broken.append(f"{n} due models went out in {result['batches']} batches")
        if result["messages"] != 1:
            broken.append(f"{n} due models put {result['messages']} messages on the broker")
        if result["moved_on"] != n:
            broken.append(f"only {result['moved_on']} of {n} next runs moved on")
        if result["runs_after_second_tick"] != n:
            broken.append("a second tick made more runs")
    if large["seconds"] > TIME_BOUND * large["models"] / 1000:
        broken.append(f"the tick took {large['seconds']:.2f} s")
    allowed = (
        small["queries"] + write_statements(large["models"]) - write_statements(small["models"])
    )
    if large["queries"] > allowed:
        broken.append(
            f"{large['queries']} queries for {large['models']} models against "
            f"{small['queries']} for {small['models']}: the tick asks once per model"
        )
    return broken


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=1000, help="models due at once")
    args = parser.parse_args()
    queue = f"bench-tick-{os.getpid()}"
    os.environ["CELERY_QUEUE"] = queue  # no worker reads it: nothing is scored

    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.db import connection

    from deploy import services

    if not services.redis_reachable(settings.REDIS_URL):
        print(f"no Redis at {settings.REDIS_URL}: start one or set REDIS_URL", file=sys.stderr)
        return 2
    try:
        with throwaway_database("bench_tick"):
            owner = User.objects.create(username="bench-tick", email="bench@example.com")
            small = measure(owner, max(1, args.models // 10), queue)
            large = measure(owner, args.models, queue)
    finally:
        import redis

        redis.Redis.from_url(settings.REDIS_URL).delete(queue)

    bound = TIME_BOUND * args.models / 1000
    print(f"\ntick with N models due at once ({connection.vendor}, {PAST_RUNS} past runs each)")
    for result in (small, large):
        print(
            f"  N = {result['models']:>5,}: {result['seconds']:.3f} s, "
            f"{result['queries']:>3} queries -> {result['runs']:,} runs in "
            f"{result['batches']} batch, {result['messages']} message; the tick after: "
            f"{result['again_seconds']:.3f} s, {result['again_queries']} queries"
        )
    print(
        f"  bound: {bound:.1f} s with {args.models:,} models; queries the same at "
        f"{small['models']:,} and {args.models:,} models but for the batches rows are "
        f"written in (+{write_statements(args.models) - write_statements(small['models'])})"
    )
    broken = failures(small, large)
    return verdict(broken)


if __name__ == "__main__":
    sys.exit(main())
