"""The engine against its physical limit, on a realistic batch.

Builds a slice of ROWS rows x 200 columns (180 numeric, 20 string categorical),
trains 10 CatBoost models whose features together span ~120 columns (some with
categorical features), deploys them through the real path (S3 server, Redis, a
Celery worker, sandboxes), scores them as one batch, and prints, all measured in
the same run:

- rows x models per second of the batch;
- batch time / physical limit, where the limit is one projected read of the union
  columns plus each model's raw predict_proba on the in-memory frame with
  categorical columns as pandas `category` (the fastest input CatBoost takes);
- naive time / batch time, the naive way being what a notebook does: each model
  reads its own columns with pandas.read_parquet and scores alone;
- the peak resident memory of the worker and of the largest sandbox.

    .venv/bin/python bench/engine_bench.py              # 1,000,000 rows
    .venv/bin/python bench/engine_bench.py --rows 4000000
"""

import argparse
import io
import os
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NUMERIC = [f"n{i:03d}" for i in range(180)]
CATEGORICAL = [f"c{i:02d}" for i in range(20)]
MODELS = 10
ROW_GROUP = 100_000


def build_slice(folder: Path, rows: int) -> None:
    """Write the slice row group by row group, so building 4M rows needs little memory."""
    rng = np.random.default_rng(0)
    levels = {
        c: np.array([f"{c}_v{k}" for k in range(5 + i * 3)]) for i, c in enumerate(CATEGORICAL)
    }
    folder.mkdir(parents=True, exist_ok=True)
    writer = None
    for start in range(0, rows, ROW_GROUP):
        n = min(ROW_GROUP, rows - start)
        columns = {"entity_id": pa.array(np.arange(start, start + n, dtype=np.int64))}
        for i, name in enumerate(NUMERIC):
            columns[name] = pa.array(
                np.round(rng.normal(i % 5, 1 + i % 3, n), 2).astype(np.float32)
            )
        for name in CATEGORICAL:
            # Plain strings, as Spark or a database export writes them.
            columns[name] = pa.array(levels[name][rng.integers(0, len(levels[name]), n)])
        table = pa.table(columns)
        writer = writer or pq.ParquetWriter(folder / "part-0.parquet", table.schema)
        writer.write_table(table, row_group_size=ROW_GROUP)
    writer.close()


def model_features() -> list[list[str]]:
    """10 feature sets over ~120 of the 200 columns; 6 of them use categorical columns."""
    rng = np.random.default_rng(1)
    pool_numeric, pool_categorical = NUMERIC[:108], CATEGORICAL[:12]
    sets = []
    for m in range(MODELS):
        numeric = list(rng.choice(pool_numeric, 30, replace=False))
        categorical = list(rng.choice(pool_categorical, 4, replace=False)) if m % 5 < 3 else []
        sets.append(numeric + categorical)
    return sets


def train_packages(folder: Path, slice_path: Path, feature_sets: list[list[str]]) -> list[Path]:
    from catboost import CatBoostClassifier

    from scoring.contract import save_package

    sample = pq.read_table(slice_path).slice(0, 30_000).to_pandas()
    target = (
        sample[NUMERIC[0]]
        + sample[NUMERIC[7]] * 0.5
        + np.random.default_rng(2).normal(0, 1, len(sample))
        > 0.5
    )
    paths = []
    for m, features in enumerate(feature_sets):
        categorical = [c for c in features if c in CATEGORICAL]
        model = CatBoostClassifier(
            iterations=300,
            depth=6,
            verbose=False,
            random_seed=m,
            allow_writing_files=False,
            cat_features=categorical,
        )
        frame = sample[features].copy()
        model.fit(frame, target.astype(int))
        path = folder / f"model-{m}.dill"
        save_package(str(path), model, features, params={"positive_class": 1})
        paths.append(path)
    return paths


def physical_limit(slice_path: Path, feature_sets, models) -> tuple[float, float]:
    """One projected read of the union columns, then each model's raw predict_proba."""
    union = list(dict.fromkeys(c for s in feature_sets for c in s))
    started = time.perf_counter()
    strings = [c for c in union if c in CATEGORICAL]
    frame = pq.read_table(slice_path, columns=union, read_dictionary=strings).to_pandas()
    read = time.perf_counter() - started
    started = time.perf_counter()
    for model, features in zip(models, feature_sets, strict=True):
        model.predict_proba(frame[features])
    return read, time.perf_counter() - started


def naive(slice_path: Path, feature_sets, models) -> float:
    import pandas as pd

    started = time.perf_counter()
    for model, features in zip(models, feature_sets, strict=True):
        frame = pd.read_parquet(slice_path, columns=features)
        model.predict_proba(frame)
    return time.perf_counter() - started


class Usage(threading.Thread):
    """Samples the worker's and the sandboxes' memory and CPU while the batch runs.

    Sandboxes are forked from the zygote, so much of their resident memory is the
    zygote's libraries, shared: their own share is the unique set size (USS). CPU is
    counted per process as last seen, so sandboxes that exit still count.
    """

    def __init__(self, worker_pid: int, s3_pid: int):
        super().__init__(daemon=True)
        self.worker_pid, self.s3_pid, self.stop_event = worker_pid, s3_pid, threading.Event()
        self.worker_peak = self.sandbox_peak = self.sandbox_unique_peak = 0
        self.cpu: dict[int, tuple[str, float]] = {}
        self.cpu_at_start = self.cpu_now()

    def cpu_now(self) -> dict[int, tuple[str, float]]:
        import psutil

        seen = {}
        root = psutil.Process(self.worker_pid)
        for process in [root, *root.children(recursive=True), psutil.Process(self.s3_pid)]:
            try:
                times = process.cpu_times()
                seen[process.pid] = (self.kind(process), times.user + times.system)
            except psutil.Error:
                continue
        return seen

    @staticmethod
    def kind(process) -> str:
        if process.name() == "weed":
            return "S3 server"
        if "scoring.zygote" not in " ".join(process.cmdline()):
            return "worker"
        if "scoring.zygote" in " ".join(process.parent().cmdline()):
            return "sandboxes"
        return "zygote"

    def run(self) -> None:
        import psutil

        root = psutil.Process(self.worker_pid)
        while not self.stop_event.wait(0.05):
            self.cpu.update(self.cpu_now())
            for process in [root, *root.children(recursive=True)]:
                try:
                    kind = self.kind(process)
                    if kind == "worker":
                        self.worker_peak = max(self.worker_peak, process.memory_info().rss)
                    elif kind == "sandboxes":
                        memory = process.memory_full_info()
                        self.sandbox_peak = max(self.sandbox_peak, memory.rss)
                        self.sandbox_unique_peak = max(self.sandbox_unique_peak, memory.uss)
                except psutil.Error:
                    continue

    def cpu_seconds(self) -> dict[str, float]:
        spent: dict[str, float] = {}
        for pid, (kind, seconds) in self.cpu.items():
            before = self.cpu_at_start.get(pid, (kind, 0.0))[1]
            spent[kind] = spent.get(kind, 0.0) + seconds - before
        return spent


def phases(log: Path) -> str:
    """The last slice's phases, from the worker's log: "slice ..., N runs in 5 s: load 0.1 s, ..."."""
    lines = [line for line in log.read_text().splitlines() if " runs in " in line]
    return "slice " + lines[-1].split(" runs in ", 1)[1] if lines else "(not logged)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--workdir", default=None, help="keep the data here (default: a temporary folder)"
    )
    parser.add_argument(
        "--part-rows",
        type=int,
        default=0,
        help="split slices larger than this over parts (default 0: one worker scores it whole)",
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
            "PART_ROWS": str(args.part_rows),
            "DJANGO_SETTINGS_MODULE": "portal.settings",
        }
    )
    from deploy import services

    (work / "state").mkdir(parents=True, exist_ok=True)
    if not slice_path.exists():
        print(f"building a {args.rows:,} x 200 slice ...", flush=True)
        build_slice(slice_path.parent, args.rows)
    feature_sets = model_features()
    union = set(c for s in feature_sets for c in s)
    print(f"{MODELS} models, {len(union)} union columns of 200, {args.rows:,} rows", flush=True)

    started = []
    try:
        s3 = services.start_seaweedfs(work / "state", "dropscore", "dropscore-secret")
        started.append(s3)
        os.environ["S3_ENDPOINT_URL"] = s3.url
        redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        if not services.redis_reachable(redis_url):
            redis = services.start_redis(work / "state")
            started.append(redis)
            redis_url = redis.url
        os.environ["REDIS_URL"] = redis_url
        os.environ["CELERY_QUEUE"] = f"bench-{os.getpid()}"

        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        from django.contrib.auth.models import User

        from scoring import deployments, dispatch, runs, storage
        from scoring.models import Batch, ScoringRun

        storage.ensure_buckets()
        packages_dir = work / "packages"
        packages_dir.mkdir(exist_ok=True)
        paths = sorted(packages_dir.glob("model-*.dill"))
        if len(paths) != MODELS:
            print("training 10 CatBoost models ...", flush=True)
            paths = train_packages(packages_dir, slice_path, feature_sets)
        import dill

        models = [dill.load(open(path, "rb"))["model"] for path in paths]

        worker = services.celery(
            "worker",
            {},
            work / "state" / "worker.log",
            "-Q",
            os.environ["CELERY_QUEUE"],
            "-c",
            "1",
            "--without-gossip",
            "--without-mingle",
        )
        started.append(services.Service("worker", worker, "", work / "state" / "worker.log"))
        user, _ = User.objects.get_or_create(username=f"bench-{os.getpid()}")
        versions = []
        for path in paths:
            data = path.read_bytes()
            versions.append(
                deployments.deploy(user, io.BytesIO(data), path.name, len(data), name=path.stem)
            )
        while any(v.state == "pending" for v in versions):
            time.sleep(0.5)
            for v in versions:
                v.refresh_from_db()
        assert all(v.state == "valid" for v in versions), [v.message for v in versions]

        run_ids = [runs.request_run(v.deployment, day).id for v in versions]
        rss = Usage(worker.pid, s3.process.pid)
        rss.start()
        batch = dispatch.send_batch(run_ids)
        while not Batch.objects.filter(id=batch.id, finished_at__isnull=False).exists():
            time.sleep(0.2)
        rss.stop_event.set()
        batch = Batch.objects.get(id=batch.id)
        done = list(ScoringRun.objects.filter(id__in=run_ids))
        assert all(r.status == "succeeded" for r in done), [(r.status, r.error) for r in done]
        batch_seconds = (batch.finished_at - batch.started_at).total_seconds()

        import resource

        before = resource.getrusage(resource.RUSAGE_SELF)
        read, predict = physical_limit(slice_path, feature_sets, models)
        after = resource.getrusage(resource.RUSAGE_SELF)
        limit_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        engine_cpu = rss.cpu_seconds()
        limit = read + predict
        naive_seconds = naive(slice_path, feature_sets, models)
        quality_seconds = sum(r.quality["seconds"] for r in done if r.quality)
        quality_share = 100 * quality_seconds / batch_seconds
        cpu_text = ", ".join(
            f"{kind} {seconds:.1f}" for kind, seconds in sorted(engine_cpu.items())
        )
        sandbox_own = rss.sandbox_unique_peak / 1024**2
        print(
            f"""
rows x models / s        {args.rows * MODELS / batch_seconds:,.0f}
batch (engine)           {batch_seconds:.2f} s   ({phases(work / "state" / "worker.log")})
physical limit           {limit:.2f} s  (read {read:.2f} s + predict {predict:.2f} s)
batch / limit            {batch_seconds / limit:.2f}x   (target <= 1.25x)
naive / batch            {naive_seconds / batch_seconds:.2f}x   (naive {naive_seconds:.2f} s; target >= 1.8x)
quality checks           {quality_seconds:.2f} s = {quality_share:.0f}% of the batch (target <= 15%)
CPU seconds, engine      {sum(engine_cpu.values()):.1f} ({cpu_text}); limit {limit_cpu:.1f}
peak RSS worker          {rss.worker_peak / 1024**2:,.0f} MB
peak RSS sandbox (max)   {rss.sandbox_peak / 1024**2:,.0f} MB ({sandbox_own:,.0f} MB its own, the rest shared)
""",
            flush=True,
        )
    finally:
        for service in reversed(started):
            service.stop()


if __name__ == "__main__":
    main()
