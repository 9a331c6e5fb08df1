"""ENGINE=spark: batches scored by one Spark job each (local mode), through the real parts:
tick, Redis, a Celery worker holding the Spark session, a Hive metastore, sandboxes on the
executors, S3 and the Delta table.

One Spark worker serves the whole module, on a queue of its own: its session (one JVM)
starts at the first batch and is kept, as in production. It reads the features from a
catalog table of its Hive metastore (embedded Derby, in the module's temporary folder) and
the labels from a path."""

import contextlib
import json
import os
import re
import shutil
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import psutil
import pytest
from django.utils import timezone

from portal import health
from scoring.engine import features as feature_sources
from scoring.engine import scores
from scoring.models import Deployment, PackageVersion, ScoringRun
from scoring.quality import ground_truth
from scoring.reports import matured
from scoring.runs import dispatch
from scoring.sandbox.client import Sandbox
from scoring.sandbox.limits import Limits
from tests import spark_tables
from tests.factories import features, packages
from tests.factories.runs import make_models
from tests.flows import (
    deploy,
    failure_emails,
    make_due,
    notifications_sent,
    start_worker,
    stop_worker,
    table_rows,
    three_kinds_score_as_their_own_predict,
    tick_until,
    wait_for_runs,
    wait_until,
)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        shutil.which("java") is None,
        reason="Spark needs Java: apt-get install openjdk-17-jre-headless",
    ),
]
# local[2,4]: two executor threads, and each task tried up to 4 times (Spark retries
# nothing in local mode unless told).
SPARK_MASTER = "local[2,4]"
WORKER_SECRET = "worker-secret-that-packages-must-not-see"  # conftest's worker_env
FEATURES_TABLE = "features.daily"  # FEATURES_URI of the Spark worker
# Validates on 200 rows; on a whole slice (500) tries `attempts` and raises what happened.
SNOOP = """
def model(frame):
    import numpy as np
    if len(frame) > 250:
        try_all({attempts!r})
    return np.full(len(frame), 0.5)
"""


@pytest.fixture(scope="module")
def spark_catalog(tmp_path_factory) -> Path:
    """The Spark worker's Hive metastore (embedded Derby) and warehouse."""
    return tmp_path_factory.mktemp("spark-catalog")


@pytest.fixture(scope="module")
def spark_labels(tmp_path_factory) -> Path:
    """LABELS_URI of the Spark worker: a path Spark reads, hive-partitioned by dt."""
    return tmp_path_factory.mktemp("spark-labels")


@pytest.fixture(scope="module")
def spark_chunks(tmp_path_factory) -> Path:
    """CHUNK_DIR of the Spark worker: where its executors hand chunks to sandboxes."""
    return tmp_path_factory.mktemp("spark-chunks")


@pytest.fixture(scope="module")
def spark_worker(
    worker_env,
    celery_app_configured,
    state_dir,
    feature_table,
    spark_catalog,
    spark_labels,
    spark_chunks,
):
    """The module's Spark worker (the suite's one JVM), reading FEATURES_TABLE: a table of
    its Hive metastore that it made of the feature table's two slices with saveAsTable."""
    app, default_queue = celery_app_configured
    queue = f"spark-{uuid.uuid4().hex[:8]}"
    env = {
        **worker_env,
        "ENGINE": "spark",
        "SPARK_MASTER": SPARK_MASTER,
        "SPARK_CONF_PARTITIONS": "spark.sql.shuffle.partitions=2",
        "SPARK_CONF_CATALOG": "spark.sql.catalogImplementation=hive",
        "SPARK_CONF_WAREHOUSE": f"spark.sql.warehouse.dir={spark_catalog / 'warehouse'}",
        "SPARK_CONF_METASTORE": "spark.hadoop.javax.jdo.option.ConnectionURL="
        f"jdbc:derby:;databaseName={spark_catalog / 'metastore_db'};create=true",
        "SPARK_CONF_DERBY": f"spark.driver.extraJavaOptions=-Dderby.system.home={spark_catalog}",
        "FEATURES_URI": FEATURES_TABLE,
        "LABELS_URI": str(spark_labels),
        "CHUNK_DIR": str(spark_chunks),
        # A batch of three models is two shards: two jobs, one after the other.
        "SHARD_MODELS": "2",
    }
    process = start_worker(
        env, queue, spark_log(state_dir), concurrency=1, include=("tests.spark_tables",)
    )
    # The worker starts its Spark session (a JVM) as it starts: tests begin once it is up.
    wait_until(
        lambda: "Spark session on" in spark_log(state_dir).read_text(),
        "the Spark worker's session started",
        timeout=240,
    )
    app.conf.task_default_queue = queue
    today = date.today()
    append_slices(feature_table, [today - timedelta(days=1), today])
    yield process
    app.conf.task_default_queue = default_queue
    stop_worker(process)


def append_slices(root: Path, days: list[date], files: int = 1) -> None:
    """Another job adds these slices of `root` to the worker's feature table."""
    from portal.celery import app

    spark_tables.append_slices(app, FEATURES_TABLE, root, days, files)


def table_folder(spark_catalog: Path, day: date) -> Path:
    """Where the metastore keeps a slice of the feature table (a managed table's folder)."""
    return spark_catalog / "warehouse" / "features.db" / "daily" / f"dt={day.isoformat()}"


def spark_log(state_dir) -> Path:
    return state_dir / "spark-worker.log"


def test_scores_equal_each_models_own_predictions(
    spark_worker, owner, validated, feature_table, bucket
):
    three_kinds_score_as_their_own_predict(owner, validated, feature_table, timeout=180)


def validated_before_the_table_lost(owner, column: str, email: str) -> int:
    """A model validated while the feature table still had `column`, which its owners
    dropped since (a catalog table has one set of columns for all its slices)."""
    [model] = make_models(owner, 1, prefix="bureau")
    Deployment.objects.filter(id=model.id).update(email=email)
    PackageVersion.objects.filter(deployment=model).update(
        package={"features": ["age", column], "method": "predict_proba", "params": {}}
    )
    return model.id


def test_a_model_missing_a_column_and_one_that_raises_fail_alone_and_their_owners_are_told(
    spark_worker, owner, outsider, validated, bucket, api, outsider_api, mailbox, tmp_path
):
    day = date.today() + timedelta(days=20)
    folder = tmp_path / f"dt={day.isoformat()}"
    folder.mkdir()
    features.feature_frame(600, seed=7).to_parquet(folder / "part-0.parquet")
    # Two files: two partitions, two tasks, whose files each run commits together (of
    # 300 rows each: the broken model raises past 250).
    append_slices(tmp_path, [day], files=2)
    good = deploy(owner, packages.function_package(), "spend", validated)
    broken = deploy(outsider, packages.broken_package(), "broken", validated)
    needs_bureau = validated_before_the_table_lost(owner, "bureau_score", "risk@bank.example")
    for client, model in ((api, good.id), (outsider_api, broken.id), (api, needs_bureau)):
        response = client.post(f"/api/v1/models/{model}/runs/", {"date": str(day)}, format="json")
        assert response.status_code == 202

    finished = {
        run.deployment_id: run
        for run in wait_for_runs(
            [good.id, broken.id, needs_bureau], ("succeeded", "retrying"), timeout=180
        )
    }

    assert (finished[good.id].status, finished[good.id].rows) == ("succeeded", 600)
    committed = table_rows(good.id, day)
    assert committed.height == committed["entity_id"].n_unique() == 600
    assert finished[needs_bureau].status == "retrying"
    assert finished[needs_bureau].error == (
        f"1 features are missing from slice {day}: bureau_score"
    )
    assert finished[broken.id].status == "retrying"
    assert "RuntimeError: the model is broken while predicting" in finished[broken.id].error
    assert table_rows(broken.id, day).height == table_rows(needs_bureau, day).height == 0
    notifications_sent()
    told = {message["To"]: message for message in failure_emails(mailbox())}
    assert set(told) == {"risk@bank.example", outsider.email}
    assert "bureau_score" in told["risk@bank.example"].get_payload(0).get_payload()
    assert "the model is broken" in told[outsider.email].get_payload(0).get_payload()


def test_a_job_that_fails_as_a_whole_tells_the_owner_one_line_and_logs_the_whole_trace(
    spark_worker, spark_chunks, owner, validated, bucket, api, state_dir
):
    model = deploy(owner, packages.function_package(), "spend", validated)
    logged_before = spark_log(state_dir).stat().st_size
    # No executor can hand its chunks to the sandboxes (CHUNK_DIR is a file): every attempt
    # of every task fails, whatever the model.
    shutil.rmtree(spark_chunks)
    spark_chunks.write_text("not a folder")
    try:
        api.post(f"/api/v1/models/{model.id}/runs/", {"date": str(date.today())}, format="json")
        [run] = wait_for_runs([model.id], ("retrying", "failed"), timeout=180)
    finally:
        spark_chunks.unlink()
        spark_chunks.mkdir()

    assert run.status == "retrying"
    assert "\n" not in run.error and len(run.error) < 400, run.error
    assert re.fullmatch(
        r"the batch failed on the worker: SparkJobFailed: NotADirectoryError: \[Errno 20\] "
        rf"Not a directory: '{re.escape(str(spark_chunks))}/dropscore-chunk-[^']+' "
        rf"\(on the executor at {re.escape(os.uname().nodename)}\)",
        run.error,
    ), run.error
    with open(spark_log(state_dir), "rb") as log:
        log.seek(logged_before)
        logged = log.read().decode(errors="replace")
    _, failed, trace = logged.partition(f"the Spark job of slice {date.today()}, shard 0 failed")
    assert failed, "the worker logged no failed job"
    assert "Traceback (most recent call last)" in trace
    assert 'scratch.py", line' in trace and "NotADirectoryError: [Errno 20]" in trace


def test_a_run_scores_the_tables_latest_slice_on_or_before_its_date_as_it_is_now(
    spark_worker, owner, validated, bucket, api, tmp_path, spark_catalog
):
    landed = date.today() + timedelta(days=30)
    features.write_feature_slice(tmp_path, landed, rows=500)
    append_slices(tmp_path, [landed])
    model = deploy(owner, packages.function_package(), "weekly", validated)
    api.patch(f"/api/v1/models/{model.id}/", {"max_slice_age_days": 3}, format="json")

    api.post(f"/api/v1/models/{model.id}/runs/", {"date": str(landed + timedelta(days=2))})
    [first] = wait_for_runs([model.id], timeout=180)
    assert (first.status, first.slice_date, first.rows) == ("succeeded", landed, 500), first.error

    # Another job rewrites the slice in place, after this session read it: the next run
    # reads it as it is now (a session that kept its listing would read deleted files).
    folder = table_folder(spark_catalog, landed)
    for path in folder.glob("*.parquet"):
        path.unlink()
    features.feature_frame(123, seed=5).to_parquet(folder / "rewritten.parquet", index=False)
    later = landed + timedelta(days=1)
    api.post(f"/api/v1/models/{model.id}/runs/", {"date": str(later)})
    runs = {run.date: run for run in wait_for_runs([model.id], timeout=180)}
    assert (runs[later].status, runs[later].slice_date, runs[later].rows) == (
        "succeeded",
        landed,
        123,
    ), runs[later].error


def test_a_run_waiting_for_the_tables_slice_starts_when_a_spark_workers_tick_finds_it(
    spark_worker, owner, validated, bucket, api, tmp_path
):
    from portal.celery import app

    day = date.today() + timedelta(days=40)
    model = deploy(owner, packages.function_package(), "spend", validated)
    api.post(f"/api/v1/models/{model.id}/runs/", {"date": str(day)}, format="json")
    wait_until(
        lambda: model.runs.filter(status=ScoringRun.Status.WAITING).exists(),
        "the run waits for its slice",
        timeout=120,
    )
    assert model.runs.get().awaited_slice == day

    features.write_feature_slice(tmp_path, day, rows=321)
    append_slices(tmp_path, [day])
    app.send_task("scoring.tasks.tick")  # beat's, taken by the Spark worker

    [run] = wait_for_runs([model.id], timeout=180)
    assert (run.status, run.slice_date, run.rows) == ("succeeded", day, 321), run.error


def test_a_retried_run_and_a_new_version_replace_the_partition_whole(
    spark_worker, owner, validated, bucket, api, source_down
):
    today = date.today()
    flaky = deploy(owner, packages.flaky_package(source_down), "spend", validated)
    make_due(flaky)
    dispatch.tick()
    [first] = wait_for_runs([flaky.id], ("retrying",), timeout=180)
    assert "the source system is down" in first.error
    source_down.unlink()

    [retried] = tick_until([flaky.id])
    assert (retried.status, retried.attempts) == ("succeeded", 2), retried.error
    committed = table_rows(flaky.id, today)
    assert committed["run_id"].unique().to_list() == [retried.id]
    assert committed.height == committed["entity_id"].n_unique() == 500

    newer = deploy(owner, packages.function_package(), "spend", validated)
    assert newer.id == flaky.id  # the same model, version 2
    response = api.post(f"/api/v1/models/{newer.id}/runs/", {"date": today.isoformat()})
    assert response.status_code == 202
    replaced = wait_for_runs([newer.id], timeout=180)
    [second] = [run for run in replaced if run.id != retried.id]
    assert second.status == "succeeded", second.error
    committed = table_rows(newer.id, today)
    assert committed["run_id"].unique().to_list() == [second.id]
    assert committed["model_version"].unique().to_list() == [2]
    assert committed.height == committed["entity_id"].n_unique() == 500


def pyspark_workers(worker) -> list[psutil.Process]:
    """The Spark worker's Python workers (forked by pyspark's daemon) that started a zygote
    and are scoring now: their zygote has a sandbox."""
    found = []
    for process in psutil.Process(worker.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "scoring.sandbox.zygote" in " ".join(process.cmdline()) and process.children():
                parent = process.parent()
                if "pyspark" in " ".join(parent.cmdline()):
                    found.append(parent)
    return found


def test_a_python_worker_killed_mid_batch_is_retried_by_spark_and_nothing_doubles(
    spark_worker, owner, validated, bucket, state_dir
):
    today = date.today()
    deployment = deploy(owner, packages.slow_package(seconds=4), "slow", validated)
    make_due(deployment)
    dispatch.tick()
    deadline = time.monotonic() + 120
    while not (scoring := pyspark_workers(spark_worker)):
        assert time.monotonic() < deadline, "no Python worker started scoring"
        time.sleep(0.1)

    for process in scoring:
        process.kill()

    [run] = wait_for_runs([deployment.id], timeout=180)
    assert (run.status, run.attempts, run.rows) == ("succeeded", 1, 500), run.error
    committed = table_rows(deployment.id, today)
    assert committed.height == committed["entity_id"].n_unique() == 500
    assert "Python worker exited unexpectedly" in spark_log(state_dir).read_text()


def test_a_package_cannot_read_the_workers_secrets_on_the_executor(
    spark_worker, owner, validated, bucket, client, tmp_path
):
    with Sandbox(tmp_path, Limits()) as sandbox:
        if not sandbox.protections["files"]["active"]:
            pytest.skip(f"files on this host: {sandbox.protections['files']['detail']}")
    worker = psutil.Process(spark_worker.pid)
    family = [worker, *worker.children(recursive=True)]
    jvm = [p for p in family if "java" in p.name()]
    assert jvm, "the Spark worker has no JVM yet"
    # The JVM, and through it the Python workers, started without the worker's secrets.
    for process in jvm:
        assert WORKER_SECRET.encode() not in Path(f"/proc/{process.pid}/environ").read_bytes()
    attempts = [["read", f"/proc/{p.pid}/environ"] for p in family]
    model = packages.notebook_function(
        packages.ATTEMPTS_CELL + SNOOP.format(attempts=attempts), "model"
    )
    package = {"model": model, "features": ["age"], "params": {"max_attempts": 1}}
    deployment = deploy(owner, package, "snoop", validated)
    make_due(deployment)
    dispatch.tick()

    [run] = wait_for_runs([deployment.id], timeout=180)

    found = re.search(r"outcomes (\{.*\}) while predicting", run.error)
    assert found, run.error
    outcomes = json.loads(found.group(1))
    assert len(outcomes) == len(attempts)
    assert set(outcomes.values()) <= {"EACCES", "ENOENT"}, outcomes
    client.force_login(owner)
    reports = health.sandbox_protections()
    [executors] = [
        report
        for name, report in reports.items()
        if name == f"Spark executors on {os.uname().nodename}"
    ]
    assert executors["protections"]["files"]["active"]
    assert executors["protections"]["environment"]["active"]


# --- the ground truth read through Spark ---------------------------------------------

LAG = 7


def write_labels(root: Path, day: date, labels: pd.DataFrame) -> None:
    folder = root / f"dt={day.isoformat()}"
    folder.mkdir(parents=True)
    labels.to_parquet(folder / "part-0.parquet", index=False)


def measured(run_ids: list[int]) -> dict[int, tuple[dict, str]]:
    """Each run's performance and status, but the moment it was measured."""
    return {
        run.id: ({**run.performance, "checked_at": None}, run.performance_status)
        for run in ScoringRun.objects.filter(id__in=run_ids)
    }


def test_the_labels_read_through_spark_give_the_figures_of_the_parquet_reader(
    spark_worker, owner, validated, bucket, api, tmp_path, spark_labels, settings
):
    from portal.celery import app

    day = date.today() - timedelta(days=2 * LAG)  # its outcomes were known a week ago
    features.write_feature_slice(tmp_path, day, rows=2000)
    append_slices(tmp_path, [day])
    churn_params = {"target": "churned", "label_lag_days": LAG}
    churn = deploy(
        owner,
        packages.sklearn_package(params=churn_params, meta={"gini_oot": 0.3}),
        "churn",
        validated,
    )
    credit_params = {"target": "defaulted", "label_lag_days": LAG}
    credit = deploy(owner, packages.function_package(params=credit_params), "credit", validated)
    for model in (churn, credit):
        api.post(f"/api/v1/models/{model.id}/runs/", {"date": str(day)}, format="json")
    runs = {run.deployment_id: run.id for run in wait_for_runs([churn.id, credit.id], timeout=180)}
    scored = pd.read_parquet(tmp_path / f"dt={day.isoformat()}")
    # Three in four customers' outcomes are known; the day before's labels have a target
    # more, which Spark's read of the whole folder must not lend to this day's.
    labels = pd.DataFrame(
        {"entity_id": scored["entity_id"], "churned": features.churn_labels(scored)}
    )
    write_labels(spark_labels, day, labels.iloc[:1500])
    write_labels(spark_labels, day - timedelta(days=1), labels.assign(defaulted=0))

    # The Celery engine's reader of the same folder, in this process.
    settings.LABELS_URI = str(spark_labels)
    ground_truth.check_matured(
        timezone.now(), feature_sources.labels_from_settings(), scores.run_scores, matured.announce
    )
    by_parquet = measured(list(runs.values()))
    ScoringRun.objects.filter(id__in=runs.values()).update(performance=None, performance_status="")
    # The Spark worker's hourly pass (ENGINE=spark): Spark reads the labels.
    app.send_task("scoring.tasks.check_ground_truth")
    wait_until(
        lambda: (
            not ScoringRun.objects.filter(id__in=runs.values(), performance__isnull=True).exists()
        ),
        "the Spark worker measured the runs",
        timeout=120,
    )
    by_spark = measured(list(runs.values()))

    assert by_spark == by_parquet
    churned, status = by_spark[runs[churn.id]]
    assert (churned["scored"], churned["labels"], churned["joined"]) == (2000, 1500, 1500)
    assert churned["gini"] > 0.2 and status in ("ok", "warning", "alert")
    defaulted, _ = by_spark[runs[credit.id]]
    assert defaulted["error"] == (
        f"the labels table has no column 'defaulted' (the package's params.target) for {day}: "
        "its Gini cannot be measured"
    )
