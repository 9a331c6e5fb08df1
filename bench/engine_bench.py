"""The engine against its physical limit, on a realistic batch.

Builds a slice of ROWS rows x 200 columns (180 numeric, 20 string categorical),
trains 10 CatBoost models whose features together span ~120 columns (some with
categorical features), deploys them through the real path (S3 server, Redis, a
Celery worker, sandboxes), scores them as one batch, and prints, all measured in
the same run:

- rows x models per second of the batch;
- batch time / physical limit, where the limit is one projected read of the union
  columns, each model's raw predict_proba on the in-memory frame with categorical
  columns as pandas `category` (the fastest input CatBoost takes), and each model's
  scores written once as Parquet to the same S3 server (bench/baselines.py); also
  without the batch's data-quality checks;
- naive time / batch time, the naive way being what a notebook does: each model
  reads its own columns with pandas.read_parquet, scores alone and writes its scores
  as Parquet to the same S3 server;
- the peak resident memory of the worker and of the largest sandbox.

It scores `--repeat` batches (default 3), each for the next day, so from the second on
the checks compare each run with the day before, as in daily use; after each batch it
measures the limit and the naive way again, and prints every batch and the medians. The
machine's speed drifts on a shared VM: a ratio of two measurements taken minutes apart
would measure the drift.

With `--workers 1,2,4` it scores the batch once per worker count, each time with that
many Celery worker processes (one pool process each, as on that many machines) and the
slice split into at least that many parts of whole row groups (PART_ROWS), so the parts
are scored side by side; it prints each batch time, the speedup over the first count,
the speedup per worker, and what the split allows (rows / the largest part). It exits
non-zero when a split batch's parts were not spread over the workers.

    .venv/bin/python bench/engine_bench.py              # 1,000,000 rows
    .venv/bin/python bench/engine_bench.py --rows 4000000
    .venv/bin/python bench/engine_bench.py --workers 1,2,4   # scale-out
    .venv/bin/python bench/engine_bench.py --engine celery,spark   # Spark local[2] beside

With `--engine celery,spark` the same batches are scored by each engine in turn (Spark in
local mode, `--spark-master`, one worker holding the session), each round followed by
its own measurements of the limit and the naive way, and the engines are printed side by
side with Spark's tasks (how many, the slowest task's phases, the first chunk's being
its fixed cost: sandboxes started and models loaded) and what they imply for N executors.
"""

import argparse
import io
import os
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.baselines import (  # noqa: E402
    Loaded,
    ScoreFiles,
    notebook_loop,
    parquet_reader,
    physical_limit,
)
from bench.engine_data import CATEGORICAL, MODELS, build_slice, model_features, train_packages  # noqa: E402
from bench.engine_log import check_seconds, phases  # noqa: E402
from bench.engine_report import report, scale_out, side_by_side  # noqa: E402
from bench.sampling import Usage, settle  # noqa: E402
from bench.workers import add_engine_arguments, log_lines, start_workers, worker_counts  # noqa: E402


def load_models(paths: list[Path], feature_sets) -> list[Loaded]:
    import dill

    return [
        Loaded(path.stem, dill.load(open(path, "rb"))["model"], features)
        for path, features in zip(paths, feature_sets, strict=True)
    ]


def union_reader(slice_path: Path, models: list[Loaded]):
    """The limit's read: the ids and the union columns at once, strings as `category`."""
    union = ["entity_id", *dict.fromkeys(c for m in models for c in m.features)]
    strings = [c for c in union if c in CATEGORICAL]
    return lambda: pq.read_table(slice_path, columns=union, read_dictionary=strings).to_pandas()


def part_rows_for(slice_path: Path, workers: int, asked: int | None) -> int:
    """PART_ROWS for a round: none for one worker (the slice is scored whole, as the engine
    does by default), else whole row groups in at least `workers` parts."""
    if asked is not None:
        return asked
    if workers == 1:
        return 0
    metadata = pq.ParquetFile(slice_path).metadata
    groups = metadata.num_row_groups
    return -(-groups // workers) * metadata.row_group(0).num_rows


def score_round(
    engine: str,
    count: int,
    label: str,
    days: list[date],
    versions,
    state: Path,
    slice_path,
    args,
    after_batch,
):
    """Start `count` workers of `engine`, score the models as one batch for each of `days`
    (after each, `after_batch()` measures what the batch is compared with), stop the workers."""
    part_rows = part_rows_for(slice_path, count, args.part_rows) if engine == "celery" else 0
    env = {"PART_ROWS": str(part_rows), "ENGINE": engine, "SPARK_MASTER": args.spark_master}
    workers = start_workers(count, label, state, env)
    batches = []
    try:
        while any(v.state == "pending" for v in versions):  # the first round validates
            time.sleep(0.5)
            for v in versions:
                v.refresh_from_db()
        assert all(v.state == "valid" for v in versions), [v.message for v in versions]
        settle(workers)
        for day in days:
            batches.append(score_batch(day, versions, workers, slice_path, args))
            batches[-1].update(after_batch())
    finally:
        for worker in workers:
            worker.stop()
    spark_start = [line for line in log_lines(workers) if "Spark session on" in line]
    return {
        "engine": engine,
        "workers": count,
        "part_rows": part_rows,
        "batches": batches,
        "spark_start": spark_start[-1].split("] ", 1)[-1] if spark_start else "",
    }


def score_batch(day: date, versions, workers, slice_path, args) -> dict:
    """Score the models as one batch for `day`, on idle workers."""
    from scoring.models import Batch, BatchPart, ScoringRun
    from scoring.runs import dispatch, lifecycle

    run_ids = [lifecycle.request_run(v.deployment, day).id for v in versions]
    usage = Usage([worker.process.pid for worker in workers], args.s3_pid)
    usage.start()
    batch = dispatch.send_batch(run_ids)
    while not Batch.objects.filter(id=batch.id, finished_at__isnull=False).exists():
        time.sleep(0.2)
    usage.stop_event.set()
    usage.join()
    batch = Batch.objects.get(id=batch.id)
    done = list(ScoringRun.objects.filter(id__in=run_ids))
    assert all(r.status == "succeeded" for r in done), [(r.status, r.error) for r in done]
    settle(workers)  # the checks' last writes, before the next measurement
    parts = list(BatchPart.objects.filter(batch=batch))
    metadata = pq.ParquetFile(slice_path).metadata
    part_sizes = [
        sum(metadata.row_group(g).num_rows for _, groups in part.rows["row_groups"] for g in groups)
        for part in parts
    ]
    lines = log_lines(workers)
    tasks = [line for line in lines if "Spark tasks of slice" in line]
    return {
        "spark_tasks": tasks[-1].split(": ", 1)[-1] if tasks else "",
        "parts": len(parts),
        "largest_part": max(part_sizes, default=metadata.num_rows),
        "part_workers": len({part.worker for part in parts}),
        "seconds": (batch.finished_at - batch.started_at).total_seconds(),
        "runs": done,
        "usage": usage,
        "phases": phases(lines, batch.id),
        "quality_seconds": check_seconds(lines),
        "baseline": (done[0].quality or {}).get("baseline") or {},
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--workdir", default=None, help="keep the data here (default: a temporary folder)"
    )
    parser.add_argument(
        "--workers",
        type=worker_counts,
        default=[1],
        help="worker processes; a list such as 1,2,4 scores the batch once per count and "
        "prints the speedup over the first (default 1)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="batches per worker count, each followed by a measurement of the limit and the "
        "naive way; the medians are printed (default 3)",
    )
    add_engine_arguments(parser)
    parser.add_argument(
        "--part-rows",
        type=int,
        default=None,
        help="split slices larger than this over parts (default: 0 with one worker, which "
        "scores the slice whole; with N workers, whole row groups in N parts)",
    )
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="dropscore-bench-"))
    day = date.today()
    features_root = work / "features"
    slice_path = features_root / f"dt={day.isoformat()}" / "part-0.parquet"
    os.environ.update(
        {
            "DROPSCORE_STATE_DIR": str(work / "state"),
            "FEATURES_URI": str(features_root),
            "MODELS_BUCKET": "bench-models",
            "SCORES_BUCKET": "bench-scores",
            "QUOTA_ACTIVE_MODELS": "100",
            "DJANGO_SETTINGS_MODULE": "portal.settings",
        }
    )
    from deploy import services

    state = work / "state"
    state.mkdir(parents=True, exist_ok=True)
    if not slice_path.exists():
        print(f"building a {args.rows:,} x 200 slice ...", flush=True)
        build_slice(slice_path.parent, args.rows)
    rows = pq.ParquetFile(slice_path).metadata.num_rows
    feature_sets = model_features()
    union = set(c for s in feature_sets for c in s)
    print(f"{MODELS} models, {len(union)} union columns of 200, {rows:,} rows", flush=True)

    started = []
    try:
        s3 = services.start_seaweedfs(state, "dropscore", "dropscore-secret")
        started.append(s3)
        args.s3_pid = s3.process.pid
        os.environ["S3_ENDPOINT_URL"] = s3.url
        redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        if not services.redis_reachable(redis_url):
            redis = services.start_redis(state)
            started.append(redis)
            redis_url = redis.url
        os.environ["REDIS_URL"] = redis_url
        os.environ["CELERY_QUEUE"] = f"bench-{os.getpid()}"

        import django

        django.setup()
        # The portal's processes allocate with jemalloc (scoring/apps.py). The limit and
        # the naive way read whole frames, for which the C library's allocator is the
        # fastest: it keeps the memory one read frees for the next (see the warm-up).
        pa.set_memory_pool(pa.system_memory_pool())
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        from django.contrib.auth.models import User

        from scoring.packages import deployments, storage

        storage.ensure_buckets()
        packages_dir = work / "packages"
        packages_dir.mkdir(exist_ok=True)
        paths = sorted(packages_dir.glob("model-*.dill"))
        if len(paths) != MODELS:
            print("training 10 CatBoost models ...", flush=True)
            paths = train_packages(packages_dir, slice_path, feature_sets)
        models = load_models(paths, feature_sets)
        read_union = union_reader(slice_path, models)
        limit_files, naive_files = (
            ScoreFiles.beside_the_scores(f"bench-{os.getpid()}/{way}") for way in ("limit", "naive")
        )

        user, _ = User.objects.get_or_create(username=f"bench-{os.getpid()}")
        versions = []
        for path in paths:
            data = path.read_bytes()
            versions.append(
                deployments.deploy(
                    user,
                    io.BytesIO(data),
                    path.name,
                    len(data),
                    name=path.stem,
                    # Later days score the one slice built: the oldest it may be.
                    max_slice_age_days=deployments.MAX_SLICE_AGE_DAYS,
                )
            )

        # Each batch is for a later date: its runs are new, they all read the same slice
        # (the latest on or before their date), and from the second on each run's checks
        # compare it with the day before, as in daily use. After each batch of the first
        # round, the limit and the naive way are measured: on a shared machine, whose speed
        # drifts, each ratio then compares measurements taken moments apart.
        read_own = parquet_reader(slice_path)

        def measure_limit() -> dict:
            return {
                "limit": physical_limit(read_union, "entity_id", models, limit_files),
                "naive": notebook_loop(read_own, "entity_id", models, naive_files),
            }

        # A process's first large read takes fresh pages, which the kernel must zero: the
        # first limit measured 1.5-2.6 s of read against 0.3-0.8 s afterwards. The worker
        # has scored before (the packages' validation), so the limit starts warm too.
        physical_limit(read_union, "entity_id", models, limit_files)
        rounds, next_day = [], day
        for engine in args.engine:
            # Spark splits the slice itself: one worker (its driver) per batch.
            counts = args.workers if engine == "celery" else [1]
            for index, count in enumerate(counts):
                days = [next_day + timedelta(days=k) for k in range(args.repeat)]
                next_day = days[-1] + timedelta(days=1)
                after = measure_limit if index == 0 else dict
                label = f"{engine}{index}"
                rounds.append(
                    score_round(
                        engine, count, label, days, versions, state, slice_path, args, after
                    )
                )
                times = ", ".join(f"{b['seconds']:.2f}" for b in rounds[-1]["batches"])
                print(f"{engine}, {count} worker(s): batches {times} s", flush=True)
        firsts = [
            r for k, r in enumerate(rounds) if k == 0 or r["engine"] != rounds[k - 1]["engine"]
        ]
        for first in firsts:
            print(f"\n=== ENGINE={first['engine']} ===")
            report(first, rows)
        if len(firsts) > 1:
            side_by_side(firsts, rows)
        unchecked = [r.id for f in firsts for b in f["batches"] for r in b["runs"] if not r.quality]
        if unchecked:
            print(f"BOUND BROKEN: runs {unchecked} have no quality checks; see the worker's log")
            return 1
        return scale_out([r for r in rounds if r["engine"] == "celery"] or rounds[:1], rows)
    finally:
        for service in reversed(started):
            service.stop()


if __name__ == "__main__":
    sys.exit(main())
