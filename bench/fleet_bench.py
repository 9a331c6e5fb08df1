"""A fleet of models due in one tick, against its physical limit, the notebook loop and one
process per model: everything measured in the same run.

Builds a slice of ROWS rows x 200 columns (180 numeric, 20 string categorical), as a
hive-partitioned Parquet dataset and, with `--source postgresql`, as a PostgreSQL table;
makes the packages as notebooks make them (60% CatBoost, 30% scikit-learn pipelines, 10%
plain functions; bench/fleet_data.py), deploys them through the portal's own code into a
throwaway database, lets the workers validate them, makes them all due and runs one tick:
one batch: first the models' first day (checks against nothing before), then a later
day on each count of `--workers`. Right after each batch it measures the limit and the
notebook loop again (the machine's speed drifts: only figures taken moments apart
compare). For each count of `--models` it prints, beside its target:

- the batch time (tick to finished) and batch / limit, the limit being, in one warm
  process, one projected read of the union columns, each model's raw predict and each
  model's scores written once as Parquet to the same S3 server (bench/baselines.py);
- notebook loop / batch: in one process, each model reads its own columns
  (pandas.read_parquet, or pandas.read_sql on PostgreSQL), predicts, writes its scores;
- one process per model / batch: a fresh interpreter per model that imports, loads its
  package, reads, predicts and writes, as an Airflow task per model; a random sample
  (`--sample`, 30) is run one after another and the time is extrapolated;
- the overhead per model beyond its own predict: (batch - the limit's predict) / models;
- each worker's peak memory, all its processes (worker, zygote, sandboxes): the sum of
  their kernel high-water marks at the worst moment, and of their PSS;
- with PostgreSQL, the engine's source's read of the union columns against ADBC's
  fetch_record_batch of the same query;
- the critical path over N workers on separate machines, from the engine's logged phases.

    .venv/bin/python bench/fleet_bench.py --workdir /tmp/fleet              # 1,000 models
    .venv/bin/python bench/fleet_bench.py --models 100 --rows 20000 --workers 1
    DATABASE_URL=postgresql://... .venv/bin/python bench/fleet_bench.py --source postgresql
    .venv/bin/python bench/fleet_bench.py --engine celery,spark   # Spark local[2] beside

With `--engine spark`, one worker holds a Spark session (`--spark-master`) and each batch
is one Spark job; its figures are printed beside Celery's, without targets.

The data and packages are kept in `--workdir` for the next run; the database (and the
S3 server's data) are thrown away at the end. It exits non-zero when a target is missed.
"""

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import fleet_data, fleet_postgres  # noqa: E402
from bench.baselines import (  # noqa: E402
    Loaded,
    ScoreFiles,
    notebook_loop,
    parquet_reader,
    physical_limit,
    sql_reader,
)
from bench.common import database_url_for, throwaway_database  # noqa: E402
from bench.engine_data import CATEGORICAL, build_slice  # noqa: E402
from bench.engine_log import phase_seconds, phases, unit_seconds  # noqa: E402
from bench.fleet_report import report  # noqa: E402
from bench.one_model import one_process_per_model  # noqa: E402
from bench.sampling import Usage, settle  # noqa: E402
from bench.workers import add_engine_arguments, log_lines, start_workers, worker_counts  # noqa: E402


def model_counts(text: str) -> list[int]:
    counts = sorted(int(item) for item in text.split(",") if item.strip())
    if not counts or counts[0] < 10:
        raise argparse.ArgumentTypeError("model counts are integers of 10 or more, e.g. 100,300")
    return counts


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=model_counts, default=[1000], help="e.g. 100,300,1000")
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the slice")
    parser.add_argument("--workers", type=worker_counts, default=[1, 2], help="e.g. 1,2")
    parser.add_argument("--source", choices=("parquet", "postgresql"), default="parquet")
    add_engine_arguments(parser)
    parser.add_argument("--sample", type=int, default=30, help="models run one process each")
    parser.add_argument("--seed", type=int, default=0, help="of the sample")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds a batch may take")
    parser.add_argument("--workdir", default=None, help="keep data and packages here")
    return parser.parse_args()


class Fleet:
    """One run of the bench: where things are, and what each measurement needs."""

    def __init__(self, args, work: Path, slice_path: Path, day: date):
        self.args, self.work, self.slice_path, self.day = args, work, slice_path, day
        self.state = work / "state"
        self.worker_env: dict[str, str] = {}
        self.next_day = day
        self.s3_pid = 0
        self.pg_url = ""
        self.first = True  # the next batch is the models' first: no day before to check against

    # -- the source, as the engine and the baselines read it --------------------------

    def union_reader(self, models: list[Loaded]):
        """The limit's one read: ids and the union columns, strings as `category`."""
        union = ["entity_id", *dict.fromkeys(c for m in models for c in m.features)]
        if self.args.source == "postgresql":

            def read():
                table = fleet_postgres.adbc_table(self.pg_url, union, self.day)
                return pa.table(
                    [
                        column.dictionary_encode() if name in CATEGORICAL else column
                        for name, column in zip(table.column_names, table.columns, strict=True)
                    ],
                    names=table.column_names,
                ).to_pandas()

            return read
        strings = [c for c in union if c in CATEGORICAL]
        return lambda: pq.read_table(
            self.slice_path, columns=union, read_dictionary=strings
        ).to_pandas()

    def notebook_reader(self):
        if self.args.source == "postgresql":
            import psycopg

            connection = psycopg.connect(self.pg_url)
            return sql_reader(connection, fleet_postgres.TABLE, "dt", self.day)
        return parquet_reader(self.slice_path)

    def one_process_source(self) -> str:
        if self.args.source == "postgresql":
            return f"{self.pg_url}?table={fleet_postgres.TABLE}"
        return str(self.slice_path)

    # -- the fleet's deployments --------------------------------------------------------

    def deploy(self, count: int, packages: list) -> tuple:
        """Each package deployed as a notebook user would: a new model of one owner."""
        from django.contrib.auth.models import User

        from scoring.packages import deployments

        user = User.objects.create(username=f"fleet-{count}", email=f"fleet-{count}@example.com")
        started = time.perf_counter()
        versions = [
            deployments.deploy(
                user,
                io.BytesIO(data),
                path.name,
                len(data),
                name=spec.name,
                # Later days score the one slice built: the oldest it may be.
                max_slice_age_days=deployments.MAX_SLICE_AGE_DAYS,
            )
            for spec, path in packages
            for data in [path.read_bytes()]
        ]
        print(f"  deployed {count} packages in {time.perf_counter() - started:.1f} s", flush=True)
        return user, versions

    def wait_valid(self, versions: list) -> None:
        from scoring.models import PackageVersion

        ids = [v.id for v in versions]
        started = time.perf_counter()
        while PackageVersion.objects.filter(id__in=ids, state="pending").exists():
            time.sleep(1)
        invalid = list(PackageVersion.objects.filter(id__in=ids).exclude(state="valid"))
        assert not invalid, [(v.deployment.name, v.message) for v in invalid[:5]]
        print(f"  validated in {time.perf_counter() - started:.1f} s", flush=True)

    # -- one round: a batch of every model, on `count` workers --------------------------

    def score_round(
        self, user, versions: list, engine: str, count: int, label: str, batches: int, after_batch
    ) -> list:
        """`batches` batches of every model on `count` workers of `engine`, one a day; after
        each, `after_batch()` measures what it is compared with, moments apart on a machine
        whose speed drifts."""
        env = {**self.worker_env, "ENGINE": engine, "SPARK_MASTER": self.args.spark_master}
        workers = start_workers(count, label, self.state, env)
        try:
            self.wait_valid(versions)
            results = []
            for _ in range(batches):
                settle(workers)
                results.append(self.one_tick(user, versions, workers, first=self.first))
                results[-1]["engine"] = engine
                self.first = False
                results[-1].update(after_batch())
                print(
                    f"  {count} worker(s), {results[-1]['day']}: batch "
                    f"{results[-1]['seconds']:.2f} s, {results[-1]['statuses']}; limit "
                    f"{results[-1]['limit'].seconds:.2f} s, notebook loop "
                    f"{results[-1]['notebook']:.2f} s",
                    flush=True,
                )
            return results
        finally:
            for worker in workers:
                worker.stop()

    def one_tick(self, user, versions: list, workers: list, first: bool) -> dict:
        """All the user's models due at noon of the next day; one tick; the batch."""
        from django.utils import timezone

        from scoring.models import Deployment, ScoringRun
        from scoring.runs import dispatch

        day, self.next_day = self.next_day, self.next_day + timedelta(days=1)
        noon = datetime.combine(day, clock_time(12), tzinfo=UTC)
        Deployment.objects.filter(owner=user).update(next_run_at=noon - timedelta(minutes=1))
        crashed_before = crashes(workers)
        usage = Usage([worker.process.pid for worker in workers], self.s3_pid)
        usage.start()
        ticked = timezone.now()
        batch = dispatch.tick(now=noon)
        crashed = wait_finished(batch.id, workers, crashed_before, self.args.timeout)
        usage.stop_event.set()
        usage.join()
        batch.refresh_from_db()
        runs = ScoringRun.objects.filter(batch=batch)
        statuses = dict.fromkeys(ScoringRun.Status.values, 0)
        for status in runs.values_list("status", flat=True):
            statuses[status] += 1
        lines = log_lines(workers)
        return {
            "workers": len(workers),
            "day": "first day" if first else "later day",
            "runs": runs.count(),
            "statuses": {k: v for k, v in statuses.items() if v},
            "errors": crashed + list(runs.exclude(error="").values_list("error", flat=True)[:3]),
            "seconds": ((batch.finished_at or timezone.now()) - ticked).total_seconds(),
            "finished": batch.finished_at is not None,
            "usage": usage,
            "phases": phases(lines, batch.id),
            "phase_seconds": phase_seconds(lines),
            "units": unit_seconds(lines, batch.id),
            "spark_tasks": next(
                (line.split("] ", 1)[-1] for line in reversed(lines) if "Spark tasks of" in line),
                "",
            ),
        }

    # -- what the batch is compared with -----------------------------------------------

    def baselines(self, count: int, packages: list):
        """What measures the limit and the notebook loop for these models, loaded once."""
        import dill

        models = [
            Loaded(spec.name, dill.loads(path.read_bytes())["model"], list(spec.features))
            for spec, path in packages
        ]
        folder = f"bench-{os.getpid()}-{count}"
        read_union = self.union_reader(models)
        limit_files = ScoreFiles.beside_the_scores(f"{folder}/limit")
        notebook_files = ScoreFiles.beside_the_scores(f"{folder}/notebook")
        physical_limit(read_union, "entity_id", models, limit_files)  # warm: see engine_bench
        read_own = self.notebook_reader()

        def measure() -> dict:
            return {
                "limit": physical_limit(read_union, "entity_id", models, limit_files),
                "notebook": notebook_loop(read_own, "entity_id", models, notebook_files),
            }

        return measure

    def one_process(self, count: int, packages: list) -> dict:
        from django.conf import settings

        separate = one_process_per_model(
            [path for _, path in packages],
            self.one_process_source(),
            self.day.isoformat(),
            f"{settings.SCORES_BUCKET}/bench-{os.getpid()}-{count}/one-process",
            self.args.sample,
            self.args.seed,
        )
        print(
            f"  one process per model: {separate['mean']:.2f} s a model "
            f"({separate['measured']} measured)",
            flush=True,
        )
        return separate


def crashes(workers: list) -> set[str]:
    """The workers' logged tasks that raised (Celery's own line for them)."""
    return {line for line in log_lines(workers) if "] raised unexpected:" in line}


def wait_finished(batch_id: int, workers: list, before: set[str], timeout: float) -> list[str]:
    """Wait until the batch is finished; the tasks that crashed instead (a batch whose task
    raised is never finished: its runs wait for their lease to be taken back)."""
    from scoring.models import Batch

    deadline = time.monotonic() + timeout
    while not Batch.objects.filter(id=batch_id, finished_at__isnull=False).exists():
        crashed = sorted(crashes(workers) - before)
        if crashed or time.monotonic() > deadline:
            return crashed
        time.sleep(1)
    return []


def prepare_slice(work: Path, rows: int, day: date) -> Path:
    """The slice as dt=<day>/part-0.parquet, built once and moved to today's date after."""
    root = work / f"features-{rows}"
    slice_path = root / f"dt={day.isoformat()}" / "part-0.parquet"
    if not slice_path.exists():
        older = sorted(root.glob("dt=*/part-0.parquet"))
        if older:
            older[-1].parent.rename(slice_path.parent)
        else:
            print(f"building a {rows:,} x 200 slice ...", flush=True)
            build_slice(slice_path.parent, rows)
    return slice_path


def main() -> int:
    args = arguments()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="dropscore-fleet-"))
    day = date.today()
    slice_path = prepare_slice(work, args.rows, day)
    fleet = Fleet(args, work, slice_path, day)
    fleet.state.mkdir(parents=True, exist_ok=True)
    os.environ.update(
        {
            "DROPSCORE_STATE_DIR": str(fleet.state),
            "FEATURES_URI": str(slice_path.parent.parent),
            "MODELS_BUCKET": "bench-models",
            "SCORES_BUCKET": "bench-scores",
            "S3_ACCESS_KEY": "dropscore",
            "S3_SECRET_KEY": "dropscore-secret",
            "QUOTA_ACTIVE_MODELS": str(10 * max(args.models)),
            "QUOTA_BYTES": str(64 * 1024**3),
            "DJANGO_SETTINGS_MODULE": "portal.settings",
        }
    )
    from deploy import services

    started = []
    try:
        s3 = services.start_seaweedfs(fleet.state, "dropscore", "dropscore-secret")
        started.append(s3)
        fleet.s3_pid = s3.process.pid
        os.environ["S3_ENDPOINT_URL"] = s3.url
        redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        if not services.redis_reachable(redis_url):
            redis = services.start_redis(fleet.state)
            started.append(redis)
            redis_url = redis.url
        os.environ["REDIS_URL"] = redis_url
        os.environ["CELERY_QUEUE"] = f"bench-fleet-{os.getpid()}"

        import django

        django.setup()
        pa.set_memory_pool(pa.system_memory_pool())  # as engine_bench: the baselines' reads
        from django.db import connection

        from scoring.engine import features

        if args.source == "postgresql":
            if connection.vendor != "postgresql":
                print("--source postgresql needs DATABASE_URL=postgresql://...", file=sys.stderr)
                return 2
            fleet.pg_url = fleet_postgres.features_url(os.environ["DATABASE_URL"])
            fleet_postgres.load_slice(fleet.pg_url, slice_path, day)
            os.environ["FEATURES_URI"] = fleet.one_process_source()
        with throwaway_database("bench_fleet") as database:
            fleet.worker_env = {"DATABASE_URL": database_url_for(database)}
            from scoring.packages import storage

            storage.ensure_buckets()
            reads = None
            if args.source == "postgresql":
                specs = fleet_data.specs(max(args.models))
                union = ["entity_id", *dict.fromkeys(c for s in specs for c in s.features)]
                source = features.PostgresSource(os.environ["FEATURES_URI"])
                reads = fleet_postgres.compare_reads(source, fleet.pg_url, union, day, 100_000)
            results = []
            for count in args.models:
                print(f"{count} models:", flush=True)
                packages = fleet_data.packages(work / "packages", slice_path, count)
                user, versions = fleet.deploy(count, packages)
                fleet.first = True
                measure = fleet.baselines(count, packages)
                # The first batch is the models' first day, whose checks have no day
                # before; every count of workers then scores a later day, as in daily use.
                rounds = []
                for engine in args.engine:
                    # Spark splits the slice itself: one worker (its driver) per batch.
                    counts = args.workers if engine == "celery" else [1]
                    for index, workers in enumerate(counts):
                        rounds += fleet.score_round(
                            user,
                            versions,
                            engine,
                            workers,
                            f"{count}-{engine}-{index}",
                            batches=2 if not rounds else 1,
                            after_batch=measure,
                        )
                one_process = fleet.one_process(count, packages)
                results.append({"models": count, "rounds": rounds, "one_process": one_process})
                from scoring.models import Deployment

                # Later counts tick days ahead: these models must not be due with them.
                Deployment.objects.filter(owner=user).update(status=Deployment.Status.PAUSED)
        return report(results, args, reads)
    finally:
        for service in reversed(started):
            service.stop()
        # The S3 data went with the database; the slice and the packages stay in --workdir.
        shutil.rmtree(fleet.state / "seaweedfs", ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
