"""ENGINE=spark: batches scored by one Spark job each (local mode), through the real parts:
tick, Redis, a Celery worker holding the Spark session, sandboxes on the executors, S3
and the Delta table.

One Spark worker serves the whole module, on a queue of its own: its session (one JVM)
starts at the first batch and is kept, as in production."""

import contextlib
import json
import os
import re
import shutil
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

import psutil
import pytest

from portal import health
from scoring.runs import dispatch
from scoring.sandbox.client import Sandbox
from scoring.sandbox.limits import Limits
from tests.factories import packages
from tests.flows import (
    deploy,
    deploy_needing,
    failure_emails,
    make_due,
    notifications_sent,
    slice_without,
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
# Validates on 200 rows; on a whole slice (500) tries `attempts` and raises what happened.
SNOOP = """
def model(frame):
    import numpy as np
    if len(frame) > 250:
        try_all({attempts!r})
    return np.full(len(frame), 0.5)
"""


@pytest.fixture(scope="module")
def spark_worker(worker_env, celery_app_configured, state_dir):
    app, default_queue = celery_app_configured
    queue = f"spark-{uuid.uuid4().hex[:8]}"
    env = {
        **worker_env,
        "ENGINE": "spark",
        "SPARK_MASTER": SPARK_MASTER,
        "SPARK_CONF_PARTITIONS": "spark.sql.shuffle.partitions=2",
        # A batch of three models is two shards: two jobs, one after the other.
        "SHARD_MODELS": "2",
    }
    process = start_worker(env, queue, spark_log(state_dir), concurrency=1)
    # The worker starts its Spark session (a JVM) as it starts: tests begin once it is up.
    wait_until(
        lambda: "Spark session on" in spark_log(state_dir).read_text(),
        "the Spark worker's session started",
        timeout=240,
    )
    app.conf.task_default_queue = queue
    yield process
    app.conf.task_default_queue = default_queue
    stop_worker(process)


def spark_log(state_dir) -> Path:
    return state_dir / "spark-worker.log"


def test_scores_equal_each_models_own_predictions(
    spark_worker, owner, validated, feature_table, bucket
):
    three_kinds_score_as_their_own_predict(owner, validated, feature_table, timeout=180)


def test_a_model_missing_a_column_and_one_that_raises_fail_alone_and_their_owners_are_told(
    spark_worker, owner, outsider, validated, feature_table, bucket, api, outsider_api, mailbox
):
    day = date.today() + timedelta(days=20)
    # Two files: two partitions, two tasks, whose files each run commits together (of
    # 300 rows each: the broken model raises past 250).
    with slice_without(feature_table, day, "late_payments", rows=600, seed=7, files=2):
        good = deploy(owner, packages.function_package(), "spend", validated)
        broken = deploy(outsider, packages.broken_package(), "broken", validated)
        needs_late = deploy_needing(owner, "late_payments", validated, email="risk@bank.example")
        for client, deployment in ((api, good), (outsider_api, broken), (api, needs_late)):
            response = client.post(
                f"/api/v1/models/{deployment.id}/runs/", {"date": day.isoformat()}, format="json"
            )
            assert response.status_code == 202
        finished = {
            run.deployment_id: run
            for run in wait_for_runs(
                [good.id, broken.id, needs_late.id], ("succeeded", "retrying"), timeout=180
            )
        }

    assert (finished[good.id].status, finished[good.id].rows) == ("succeeded", 600)
    committed = table_rows(good.id, day)
    assert committed.height == committed["entity_id"].n_unique() == 600
    assert finished[needs_late.id].status == "retrying"
    assert finished[needs_late.id].error == (
        f"1 features are missing from slice {day}: late_payments"
    )
    assert finished[broken.id].status == "retrying"
    assert "RuntimeError: the model is broken while predicting" in finished[broken.id].error
    assert table_rows(broken.id, day).height == table_rows(needs_late.id, day).height == 0
    notifications_sent()
    told = {message["To"]: message for message in failure_emails(mailbox())}
    assert set(told) == {"risk@bank.example", outsider.email}
    assert "late_payments" in told["risk@bank.example"].get_payload(0).get_payload()
    assert "the model is broken" in told[outsider.email].get_payload(0).get_payload()


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
