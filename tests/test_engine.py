"""Batch scoring through the real parts: tick, Redis, Celery workers, sandboxes, S3 and Delta Lake."""

import contextlib
import io
import shutil
import threading
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
from django.db import close_old_connections

from scoring.models import Deployment, ScoringRun
from scoring.quality import profiles
from scoring.runs import dispatch, lifecycle
from tests.factories import features, packages
from tests.flows import (
    deploy,
    deploy_needing,
    failure_emails,
    make_due,
    notifications_sent,
    report_emails,
    slice_frame,
    slice_without,
    start_worker,
    stop_worker,
    subject,
    table_rows,
    three_kinds_score_as_their_own_predict,
    wait_for_runs,
)

pytestmark = pytest.mark.django_db(transaction=True)


def test_scores_equal_each_models_own_predictions(
    worker, owner, validated, feature_table, bucket, api
):
    three_kinds_score_as_their_own_predict(owner, validated, feature_table)


def test_lightgbm_and_xgboost_models_with_categories_score_as_their_own_predict(
    worker, owner, validated, feature_table, bucket, api
):
    import xgboost

    made = {
        "lgbm-classifier": packages.lightgbm_package(),
        "lgbm-booster": packages.lightgbm_booster_package(),
        "xgb-classifier": packages.xgboost_package(),
        "xgb-booster": packages.xgboost_booster_package(),
    }
    ids = {name: deploy(owner, package, name, validated).id for name, package in made.items()}
    make_due(*Deployment.objects.all())

    dispatch.tick()

    finished = wait_for_runs(ids.values())
    today = date.today()
    # As the user would call each model on the slice: region and plan are pandas categories.
    frame = slice_frame(feature_table, today)[features.FEATURES]
    assert {frame["region"].dtype.name, frame["plan"].dtype.name} == {"category"}
    models = {name: package["model"] for name, package in made.items()}
    expected = {
        "lgbm-classifier": models["lgbm-classifier"].predict_proba(frame)[:, 1],
        "lgbm-booster": models["lgbm-booster"].predict(frame),
        "xgb-classifier": models["xgb-classifier"].predict_proba(frame)[:, 1],
        "xgb-booster": models["xgb-booster"].predict(
            xgboost.DMatrix(frame, enable_categorical=True)
        ),
    }
    assert [run.status for run in finished] == ["succeeded"] * 4, [r.error for r in finished]
    for name, deployment_id in ids.items():
        committed = table_rows(deployment_id, today).sort("entity_id")
        assert committed.height == 500
        np.testing.assert_allclose(
            committed["score"].to_numpy(), expected[name], rtol=1e-6, err_msg=name
        )


def test_a_model_missing_a_column_fails_alone_and_its_owner_is_told(
    worker, owner, validated, feature_table, bucket, api, mailbox
):
    day = date.today() + timedelta(days=10)
    with slice_without(feature_table, day, "late_payments", rows=300, seed=5):
        good = deploy(owner, packages.function_package(), "spend", validated)
        also_good = deploy(
            owner, {"model": packages.Proba(0.7), "features": ["age", "region"]}, "churn", validated
        )
        needs_late = deploy_needing(owner, "late_payments", validated, email="risk@bank.example")
        responses = [
            api.post(f"/api/v1/models/{d.id}/runs/", {"date": day.isoformat()}, format="json")
            for d in (good, also_good, needs_late)
        ]
        assert [r.status_code for r in responses] == [202, 202, 202]

        finished = {
            run.deployment_id: run
            for run in wait_for_runs(
                [good.id, also_good.id, needs_late.id], ("succeeded", "failed", "retrying")
            )
        }

    assert [finished[d.id].status for d in (good, also_good)] == ["succeeded", "succeeded"]
    assert table_rows(good.id, day).height == table_rows(also_good.id, day).height == 300
    failed = finished[needs_late.id]
    assert failed.status == "retrying", (failed.date, failed.slice_date, failed.rows, failed.error)
    assert failed.error == f"1 features are missing from slice {day}: late_payments"
    assert table_rows(needs_late.id, day).height == 0
    notifications_sent()
    [message] = failure_emails(mailbox())
    assert message["To"] == "risk@bank.example"
    assert message["Subject"] == f"late failed for {day} (attempt 1 of 3)"
    text = message.get_payload(0).get_payload()
    assert "1 features are missing from slice" in text and "late_payments" in text
    assert "The next attempt is at" in text
    # "Score now" sends each run as a batch of its own: one report each. Proba(0.7)
    # scores every row alike, which the quality checks call out.
    reports = sorted(subject(m) for m in report_emails(mailbox, day, 3))
    assert reports == [
        f"[Dropscore] ALERT — churn returned constant scores ({day})",
        f"[Dropscore] FAILED — late failed ({day})",
        f"[Dropscore] OK — spend scored ({day})",
    ]


def test_two_ticks_at_once_make_one_run(owner, validated, worker, bucket):
    deployment = deploy(owner, packages.function_package(), "spend", validated)
    make_due(deployment)
    barrier = threading.Barrier(4)
    batches = []

    def tick():
        barrier.wait()
        batches.append(dispatch.tick())
        close_old_connections()

    threads = [threading.Thread(target=tick) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert ScoringRun.objects.filter(deployment=deployment).count() == 1
    assert len([b for b in batches if b is not None]) == 1
    wait_for_runs([deployment.id])


def test_a_tick_while_a_batch_runs_sends_no_second_batch(owner, validated, worker, bucket):
    deployment = deploy(owner, packages.slow_package(seconds=3), "slow", validated)
    make_due(deployment)
    assert dispatch.tick() is not None
    wait_for_runs([deployment.id], statuses=("running",))

    assert dispatch.tick() is None
    [run] = wait_for_runs([deployment.id])
    assert (run.status, run.attempts) == ("succeeded", 1)


# A worker killed mid-batch: tests/test_faults.py, with the other faults.


def test_a_model_that_fails_twice_then_succeeds_ends_succeeded_after_three_attempts(
    owner, validated, worker, bucket, mailbox, source_down
):
    deployment = deploy(owner, packages.flaky_package(source_down), "flaky", validated)
    make_due(deployment)
    dispatch.tick()
    for attempt in (1, 2):
        [run] = wait_for_runs([deployment.id], statuses=("retrying",))
        assert run.attempts == attempt
        if attempt == 2:
            source_down.unlink()  # the source system is back
        dispatch.tick()  # retry_delay_minutes is 0: the retry is due at once

    [run] = wait_for_runs([deployment.id])
    assert (run.status, run.attempts) == ("succeeded", 3)
    notifications_sent()
    # two pool processes: files in any order
    subjects = sorted(m["Subject"] for m in failure_emails(mailbox()))
    assert subjects == [
        f"flaky failed for {run.date} (attempt 1 of 3)",
        f"flaky failed for {run.date} (attempt 2 of 3)",
    ]
    assert table_rows(deployment.id, run.date).height == 500


def test_a_model_that_always_fails_stops_at_max_attempts_with_a_final_email(
    owner, validated, worker, bucket, mailbox, source_down
):
    package = packages.flaky_package(source_down, max_attempts=2)
    deployment = deploy(owner, package, "doomed", validated)
    make_due(deployment)
    dispatch.tick()
    wait_for_runs([deployment.id], statuses=("retrying",))
    dispatch.tick()

    [run] = wait_for_runs([deployment.id], statuses=("failed",))
    assert run.attempts == 2
    assert "RuntimeError: the source system is down while predicting" in run.error
    assert dispatch.tick() is None  # nothing more to do
    notifications_sent()
    # two pool processes: files in any order
    subjects = sorted(m["Subject"] for m in failure_emails(mailbox()))
    assert subjects == [
        f"Gave up: doomed failed 2 times for {run.date}",
        f"doomed failed for {run.date} (attempt 1 of 2)",
    ]
    [final] = [m for m in mailbox() if m["Subject"].startswith("Gave up")]
    assert "Dropscore gave up on this date" in final.get_payload(0).get_payload()


def test_runs_and_scores_through_the_api(owner, validated, worker, bucket, api, outsider_api):
    deployment = deploy(owner, packages.function_package(), "spend", validated)
    response = api.post(f"/api/v1/models/{deployment.id}/runs/", {}, format="json")
    assert response.status_code == 202
    run_id = response.json()["id"]
    [run] = wait_for_runs([deployment.id])

    body = api.get(f"/api/v1/runs/{run_id}/").json()
    assert (body["status"], body["rows"], body["slice_date"], body["attempts"]) == (
        "succeeded",
        500,
        date.today().isoformat(),
        1,
    )
    assert [r["id"] for r in api.get(f"/api/v1/models/{deployment.id}/runs/").json()] == [run_id]

    again = api.post(f"/api/v1/models/{deployment.id}/runs/", {}, format="json")
    assert again.status_code == 409
    assert "already scored" in again.json()["detail"]

    csv = api.get(f"/api/v1/runs/{run_id}/scores/?format=csv")
    lines = b"".join(csv.streaming_content).decode().splitlines()
    assert lines[0] == '"entity_id","score"' and len(lines) == 501
    parquet = api.get(f"/api/v1/runs/{run_id}/scores/?format=parquet")
    table = pd.read_parquet(io.BytesIO(b"".join(parquet.streaming_content)))
    assert list(table.columns) == ["entity_id", "score"] and len(table) == 500

    assert outsider_api.get(f"/api/v1/runs/{run_id}/").status_code == 404
    assert outsider_api.get(f"/api/v1/runs/{run_id}/scores/").status_code == 404
    assert outsider_api.get(f"/api/v1/models/{deployment.id}/runs/").status_code == 404
    assert (
        outsider_api.post(f"/api/v1/models/{deployment.id}/runs/", {}, format="json").status_code
        == 404
    )


def test_score_now_on_the_model_page_shows_the_run_and_its_downloads(
    owner, outsider, validated, worker, bucket, client
):
    deployment = deploy(owner, packages.function_package(), "spend", validated)
    client.force_login(owner)

    response = client.post(f"/models/{deployment.id}/score/", follow=True)
    assert "is queued" in response.content.decode()
    [run] = wait_for_runs([deployment.id])
    page = client.get(f"/models/{deployment.id}/").content.decode()
    assert f'data-run-status="{run.id}">succeeded' in page
    assert f"/runs/{run.id}/scores.csv" in page

    csv = client.get(f"/runs/{run.id}/scores.csv")
    assert (
        csv["Content-Disposition"] == f'attachment; filename="spend-v1-{run.date}-run{run.id}.csv"'
    )
    assert len(b"".join(csv.streaming_content).splitlines()) == 501

    client.force_login(outsider)
    assert client.get(f"/runs/{run.id}/scores.csv").status_code == 404
    assert client.post(f"/models/{deployment.id}/score/").status_code == 404


def test_a_large_slice_is_split_over_several_workers_and_committed_once(
    owner, validated, worker, worker_env, bucket, feature_table, state_dir, celery_app_configured
):
    from scoring.models import BatchPart

    app, queue = celery_app_configured
    day = date.today() + timedelta(days=20)
    folder = feature_table / f"dt={day.isoformat()}"
    folder.mkdir()
    frame = features.feature_frame(500, seed=9)
    frame.to_parquet(
        folder / "part-0.parquet", row_group_size=100
    )  # 5 row groups: parts of 2, 2 and 1
    catboost, function = packages.catboost_package(), packages.function_package()
    deployed = [
        deploy(owner, catboost, "churn", validated),
        deploy(owner, function, "spend", validated),
    ]
    own_queue = f"{queue}-parts"
    app.conf.task_default_queue = own_queue
    env = {**worker_env, "PART_ROWS": "200"}
    workers = [
        start_worker({**env, "CELERY_QUEUE": own_queue}, own_queue, state_dir / f"parts-{i}.log")
        for i in range(2)
    ]
    try:
        run_ids = [lifecycle.request_run(d, day).id for d in deployed]
        dispatch.send_batch(run_ids)
        finished = wait_for_runs([d.id for d in deployed])
    finally:
        app.conf.task_default_queue = queue
        for process in workers:
            stop_worker(process)
        shutil.rmtree(folder)

    parts = list(BatchPart.objects.order_by("index"))
    assert [len(sum((groups for _, groups in p.rows["row_groups"]), [])) for p in parts] == [
        2,
        2,
        1,
    ]
    assert len({p.worker for p in parts}) == 2, "both workers took parts"
    assert all(run.status == "succeeded" and run.rows == 500 for run in finished), [
        r.error for r in finished
    ]
    expected = {
        deployed[0].id: catboost["model"].predict_proba(frame[features.FEATURES])[:, 1],
        deployed[1].id: function["model"](frame[["monthly_spend"]]),
    }
    for deployment_id, scores_ in expected.items():
        committed = table_rows(deployment_id, day).sort("entity_id")
        assert committed["entity_id"].to_list() == list(range(500))
        np.testing.assert_allclose(committed["score"].to_numpy(), scores_, rtol=1e-9)
    assert not scores_staged()
    # Each unit profiled its rows' scores; the committer merged them into the run's profile.
    assert all(set(p.profiles) == {str(run.id) for run in finished} for p in parts)
    for run in finished:
        deciles = run.profile["deciles"]
        in_deciles = profiles.bin_counts(expected[run.deployment_id], np.array(deciles["edges"]))
        assert run.profile["rows"] == 500 and deciles["counts"] == in_deciles.tolist()


def scores_staged() -> list[str]:
    from django.conf import settings

    from scoring.packages import storage

    listing = storage.client().list_objects_v2(Bucket=settings.SCORES_BUCKET, Prefix="_staging/")
    return [item["Key"] for item in listing.get("Contents", [])]


def postgres_feature_table(dsn: str, name: str) -> dict[date, pd.DataFrame]:
    """Two daily slices of the test features in a PostgreSQL table of the test database."""
    import adbc_driver_postgresql.dbapi as adbc
    import pyarrow as pa

    frames, tables = {}, []
    for days_ago in (1, 0):
        day = date.today() - timedelta(days=days_ago)
        frames[day] = frame = features.feature_frame(500, seed=day.toordinal())
        table = pa.Table.from_pandas(frame, preserve_index=False)
        for column in features.CATEGORICAL:
            index = table.schema.get_field_index(column)
            table = table.set_column(index, column, table[column].cast(pa.string()))
        tables.append(table.append_column("dt", pa.array([day] * len(frame), pa.date32())))
    with adbc.connect(dsn) as connection, connection.cursor() as cursor:
        cursor.adbc_ingest(name, pa.concat_tables(tables), mode="create")
        connection.commit()
    return frames


@contextlib.contextmanager
def postgres_features():
    """The test features of yesterday and today in the PostgreSQL table engine_features of
    the test database: (its DSN, the frames by day)."""
    from django.db import connection

    from tests.flows import database_url

    if connection.vendor != "postgresql":
        pytest.skip(
            "a PostgreSQL feature table needs PostgreSQL: set DATABASE_URL=postgresql://..."
        )
    dsn = database_url(connection.settings_dict)
    frames = postgres_feature_table(dsn, "engine_features")
    try:
        yield dsn, frames
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE engine_features CASCADE")


@pytest.fixture
def score_two_models(owner, validated, worker_env, state_dir, celery_app_configured):
    """Scores a CatBoost model and a function from the PostgreSQL features with `workers`
    workers of one task at a time, each exactly as its own predict scores today's `frame`."""

    def score(env: dict, workers: int, frame: pd.DataFrame) -> None:
        app, queue = celery_app_configured
        own_queue = f"{queue}-postgres"
        app.conf.task_default_queue = own_queue
        env = {**worker_env, **env, "CELERY_QUEUE": own_queue}
        started = [
            start_worker(env, own_queue, state_dir / f"postgres-{i}.log", concurrency=1)
            for i in range(workers)
        ]
        try:
            catboost, function = packages.catboost_package(), packages.function_package()
            deployed = [
                deploy(owner, catboost, "churn", validated),
                deploy(owner, function, "spend", validated),
            ]
            make_due(*Deployment.objects.all())
            dispatch.tick()
            finished = wait_for_runs([d.id for d in deployed])
        finally:
            app.conf.task_default_queue = queue
            for process in started:
                stop_worker(process)

        today = date.today()
        for run in finished:
            assert (run.status, run.rows, run.slice_date) == ("succeeded", 500, today), run.error
        expected = {
            deployed[0].id: catboost["model"].predict_proba(frame[features.FEATURES])[:, 1],
            deployed[1].id: function["model"](frame[["monthly_spend"]]),
        }
        for deployment_id, scores_ in expected.items():
            committed = table_rows(deployment_id, today).sort("entity_id")
            assert committed["entity_id"].to_list() == frame["entity_id"].tolist()
            np.testing.assert_allclose(committed["score"].to_numpy(), scores_, rtol=1e-9)

    return score


def test_a_slice_in_postgresql_is_split_by_id_over_two_workers(bucket, score_two_models):
    from scoring.models import BatchPart

    with postgres_features() as (dsn, frames):
        env = {"FEATURES_URI": f"{dsn}?table=engine_features", "PART_ROWS": "200"}
        score_two_models(env, 2, frames[date.today()])

    parts = list(BatchPart.objects.order_by("index"))
    assert len(parts) == 3 and len({p.worker for p in parts}) == 2, "both workers took id ranges"


@contextlib.contextmanager
def noted_reads(connection, view: str, table: str):
    """A view of the table that notes the text of each query that reads it, through dblink:
    outside the reader's transaction, which ends in a rollback. Yields the notes' reader."""

    def queries() -> list[str]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT query FROM feature_reads")
            return [row[0] for row in cursor.fetchall()]

    with connection.cursor() as cursor:
        cursor.execute("CREATE EXTENSION IF NOT EXISTS dblink")
        cursor.execute("CREATE TABLE feature_reads (query text)")
        cursor.execute(
            "CREATE FUNCTION note_read() RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN"
            " PERFORM dblink_exec('dbname=' || current_database(), format("
            "'INSERT INTO feature_reads VALUES (%L)', current_query())); RETURN true; END $$"
        )
        # An uncorrelated subquery runs once per query, whatever the rows.
        cursor.execute(f"CREATE VIEW {view} AS SELECT * FROM {table} WHERE (SELECT note_read())")
    try:
        yield queries
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP VIEW IF EXISTS {view}")
            cursor.execute("DROP TABLE feature_reads")
            cursor.execute("DROP FUNCTION note_read()")


def test_the_shards_of_a_batch_read_a_postgresql_slice_once_per_part(bucket, score_two_models):
    """Two shards x three parts: the database serves each part of the rows once, to the
    first of its units; the other reads the copy that one kept, which goes with the batch."""
    from django.conf import settings
    from django.db import connection

    from scoring.models import Batch, BatchPart, SliceCopy
    from scoring.packages import storage

    with (
        postgres_features() as (dsn, frames),
        noted_reads(connection, "noted_features", "engine_features") as queries,
    ):
        env = {
            "FEATURES_URI": f"{dsn}?table=noted_features",
            "PART_ROWS": "200",
            "SHARD_MODELS": "1",
        }
        score_two_models(env, 1, frames[date.today()])
        # Scoring reads the id too (validation reads samples of the features alone).
        reads = [q for q in queries() if q.startswith('COPY (SELECT "entity_id", ')]

    units = BatchPart.objects.all()
    assert sorted((u.shard, u.index) for u in units) == [(s, i) for s in (0, 1) for i in range(3)]
    assert len(reads) == 3 and len(set(reads)) == 3, "each part read once:\n" + "\n".join(reads)
    assert set(SliceCopy.objects.values_list("status", flat=True)) == {"ready"}
    # A worker stops once its task is done: the last unit closed the batch.
    batch = Batch.objects.get()
    assert batch.finished_at is not None
    prefix = f"slices/batch-{batch.id}/"
    listing = storage.client().list_objects_v2(Bucket=settings.SCORES_BUCKET, Prefix=prefix)
    assert listing["KeyCount"] == 0, f"the copies went when the batch closed: {listing}"
