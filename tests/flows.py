"""Helpers of the tests that drive whole runs through the real worker: deploying, waiting for
runs and emails, what a batch left, and the workers. The faults they inject: tests/faults.py."""

import contextlib
import io
import shutil
import time
import uuid
from datetime import date, timedelta
from email.header import decode_header, make_header
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
import polars as pl
import pytest
from celery.beat import PersistentScheduler
from django.utils import timezone

from deploy import services
from scoring.engine import scores
from scoring.models import (
    BatchPart,
    Deployment,
    Notification,
    PackageVersion,
    Report,
    ScoringRun,
)
from scoring.packages import deployments
from scoring.runs import dispatch
from tests.factories import features, packages
from tests.factories import runs as runs_factory


def deploy(user, package: dict, name: str, validated, **settings_):
    data = packages.dumps(package)
    version = validated(
        deployments.deploy(
            user, io.BytesIO(data), f"{name}.dill", len(data), name=name, **settings_
        )
    )
    assert version.state == "valid", version.message
    return version.deployment


def wait_for_runs(deployment_ids, statuses=("succeeded", "failed"), timeout=90) -> list[ScoringRun]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(
            ScoringRun.objects.filter(deployment_id__in=deployment_ids).select_related("version")
        )
        if found and all(run.status in statuses for run in found):
            return found
        time.sleep(0.3)
    raise AssertionError(f"runs not finished: {[(r.id, r.status, r.error) for r in found]}")


def subject(message) -> str:
    return str(make_header(decode_header(message["Subject"])))


def text_of(message) -> str:
    plain = next(part for part in message.walk() if part.get_content_type() == "text/plain")
    if plain.get("Content-Transfer-Encoding", "8bit").lower() in ("7bit", "8bit"):
        return plain.get_payload()  # parsed from text: already a str
    return plain.get_payload(decode=True).decode()


def failure_emails(messages) -> list:
    return [m for m in messages if not subject(m).startswith("[Dropscore]")]


def notifications_sent(timeout: float = 20) -> None:
    """Wait for the worker to send the failure emails queued so far: it does so just after a
    failure is committed, while the batch goes on."""
    in_flight = Notification.objects.filter(sent_at__isnull=True, send_error="")
    wait_until(lambda: not in_flight.exists(), "the failure emails are sent", timeout)
    unsent = Notification.objects.filter(sent_at__isnull=True)
    assert list(unsent.values_list("send_error", flat=True)) == []


def report_emails(mailbox, day: date, count: int, timeout: float = 20) -> list:
    """The reports of batches for `day`, which go out just after their runs finish."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [
            m for m in mailbox() if subject(m).startswith("[Dropscore]") and f"{day})" in subject(m)
        ]
        if len(found) >= count:
            return found
        time.sleep(0.2)
    raise AssertionError(f"fewer than {count} report emails after {timeout} s")


ENTITIES = list(range(500))  # today's slice of the test feature table


def make_due(*deployments_):
    Deployment.objects.filter(id__in=[d.id for d in deployments_]).update(
        next_run_at=timezone.now() - timedelta(seconds=1)
    )


def tick_until(deployment_ids, statuses=("succeeded", "failed"), timeout=180) -> list[ScoringRun]:
    """Tick as beat would (here every half second) until every run of these models is done."""
    deadline = time.monotonic() + timeout
    while True:
        dispatch.tick()
        found = list(ScoringRun.objects.filter(deployment_id__in=deployment_ids))
        if found and all(run.status in statuses for run in found):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"runs not done: {[(r.id, r.status, r.error) for r in found]}")
        time.sleep(0.5)


def wait_until(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout} s")
        time.sleep(0.2)


def log_lines(logs: list[Path], *parts: str) -> int:
    """How many lines of these logs contain all of `parts`."""
    return sum(
        all(part in line for part in parts)
        for path in logs
        if path.exists()
        for line in path.read_text().splitlines()
    )


def table_rows(deployment_id: int, day: date, table: str = scores.TABLE) -> pl.DataFrame:
    """A model's partition of a day in a scores table, as a reader (Polars) sees it."""
    frame = pl.read_delta(scores.table_uri(table), storage_options=scores.storage_options())
    return frame.filter((pl.col("model_id") == deployment_id) & (pl.col("dt") == day.isoformat()))


@contextlib.contextmanager
def slice_without(feature_table, day: date, column: str, rows: int, seed: int, files: int = 1):
    """A slice of `day` that lacks `column`, in `files` Parquet files of equal rows, for the
    time of the block."""
    folder = feature_table / f"dt={day.isoformat()}"
    folder.mkdir()
    frame = features.feature_frame(rows, seed=seed).drop(columns=[column])
    each = rows // files
    try:
        for index in range(files):
            frame.iloc[index * each : (index + 1) * each].to_parquet(
                folder / f"part-{index}.parquet"
            )
        yield
    finally:
        shutil.rmtree(folder)


def deploy_needing(user, column: str, validated, **settings_) -> Deployment:
    """ "late": a model that needs `column` beside age."""
    package = {"model": packages.Proba(0.3), "features": ["age", column]}
    return deploy(user, package, "late", validated, **settings_)


def slice_frame(feature_table, day: date) -> pd.DataFrame:
    return pd.read_parquet(feature_table / f"dt={day.isoformat()}" / "part-0.parquet")


def three_kinds_score_as_their_own_predict(owner, validated, feature_table, timeout=90) -> None:
    """A CatBoost model with categorical features, a scikit-learn pipeline and a plain
    function, due in one tick: each model's partition holds every entity once, with the
    scores of the model's own predict on the slice."""
    catboost, sklearn, function = (
        packages.catboost_package(),
        packages.sklearn_package(),
        packages.function_package(),
    )
    ids = {
        "catboost": deploy(owner, catboost, "catboost", validated).id,
        "sklearn": deploy(owner, sklearn, "sklearn", validated).id,
        "function": deploy(owner, function, "function", validated).id,
    }
    make_due(*Deployment.objects.filter(id__in=ids.values()))

    batch = dispatch.tick()

    assert batch is not None and batch.runs.count() == 3
    finished = wait_for_runs(ids.values(), timeout=timeout)
    today = date.today()
    frame = slice_frame(feature_table, today).set_index("entity_id", drop=False).sort_index()
    expected = {
        "catboost": catboost["model"].predict_proba(frame[features.FEATURES])[:, 1],
        "sklearn": sklearn["model"].predict_proba(frame[features.FEATURES])[:, 1],
        "function": function["model"](frame[["monthly_spend"]]),
    }
    for run in finished:
        assert (run.status, run.rows, run.slice_date, run.attempts) == (
            "succeeded",
            500,
            today,
            1,
        ), run.error
    for name, deployment_id in ids.items():
        committed = table_rows(deployment_id, today).sort("entity_id")
        assert committed["entity_id"].to_list() == frame["entity_id"].tolist()
        np.testing.assert_allclose(
            committed["score"].to_numpy(), np.asarray(expected[name]), rtol=1e-9
        )
        assert committed["run_id"].n_unique() == 1


def champion_rows(frame: pl.DataFrame) -> pl.DataFrame:
    """The models' own scores, as a downstream reader takes them (README: a challenger's
    rows sit beside them under role "challenger")."""
    return frame.filter(pl.col("role").fill_null("champion") == "champion")


def committed_entities(deployment_id: int, day: date) -> list:
    """The entity ids of a model's committed partition, as a reader of the table sees them."""
    frame = pl.read_delta(scores.table_uri(), storage_options=scores.storage_options())
    partition = champion_rows(frame).filter(
        (pl.col("model_id") == deployment_id) & (pl.col("dt") == day.isoformat())
    )
    assert partition["run_id"].n_unique() <= 1, "two runs' rows in one partition"
    return sorted(partition["entity_id"].to_list())


def committed_partitions(day: date) -> dict[int, list]:
    """{model id: the sorted entity ids of its committed partition of `day`}, in one read."""
    frame = pl.read_delta(scores.table_uri(), storage_options=scores.storage_options())
    partitions = champion_rows(frame).filter(pl.col("dt") == day.isoformat())
    found = {}
    for (model_id,), rows in partitions.group_by("model_id"):
        assert rows["run_id"].n_unique() == 1, f"two runs' rows in the partition of {model_id}"
        found[int(model_id)] = sorted(rows["entity_id"].to_list())
    return found


def clone_models(deployment: Deployment, owner, count: int, prefix: str) -> list[Deployment]:
    """`count` models of `owner` made from a validated one: each its own copy of the package
    in the models bucket, as if each had been uploaded and validated (a fleet in seconds)."""
    from django.conf import settings

    from scoring.packages import storage

    version = deployment.latest_version
    made = Deployment.objects.bulk_create(
        Deployment(
            owner=owner, name=f"{prefix}-{i:04d}", slug=f"{prefix}-{i:04d}", email=owner.email
        )
        for i in range(count)
    )
    copies = []
    for clone in made:
        key = f"{owner.username}/{clone.slug}/v1.dill"
        storage.client().copy_object(
            Bucket=settings.MODELS_BUCKET,
            Key=key,
            CopySource={"Bucket": settings.MODELS_BUCKET, "Key": version.file.name},
        )
        copies.append(
            PackageVersion(
                deployment=clone,
                number=1,
                file=key,
                filename=f"{clone.slug}.dill",
                size=version.size,
                sha256=version.sha256,
                state=version.state,
                package=version.package,
            )
        )
    PackageVersion.objects.bulk_create(copies)
    return runs_factory.with_champions(made)


def owner_emails(mailbox, address: str, day: date, reports: int) -> tuple[list, list]:
    """(report subjects, failure subjects) sent to `address` about `day`, once `reports`
    reports are in; every email the test's workers sent must be one of these."""
    found = report_emails(mailbox, day, reports)
    notifications_sent()
    messages = mailbox()
    assert {m["To"] for m in messages} == {address}, [m["To"] for m in messages]
    failures = [subject(m) for m in failure_emails(messages)]
    assert len(messages) == len(found) + len(failures)
    return sorted(subject(m) for m in found), sorted(failures)


def assert_settled() -> None:
    """Nothing left half-done: no run queued or running, no part unfinished, every email sent.

    A report's email reaches the mailbox a moment before the worker marks the report sent,
    so that mark is waited for, briefly; a report whose sending failed shows its error."""
    assert not ScoringRun.objects.filter(status__in=["queued", "running"]).exists()
    assert not BatchPart.objects.filter(status__in=["queued", "running"]).exists()
    in_flight = Report.objects.filter(sent_at__isnull=True, send_error="")
    wait_until(lambda: not in_flight.exists(), "the sent report is marked sent", timeout=10)
    assert list(Report.objects.filter(sent_at__isnull=True).values_list("send_error")) == []
    notifications_sent(timeout=10)


# --- workers -------------------------------------------------------------------

# A sandbox's timeout in the session's workers: short, so a hanging package fails fast.
WORKER_SANDBOX_TIMEOUT = 8


def start_worker(
    env: dict, queue: str, log: Path, concurrency: int = 2, include: tuple[str, ...] = ()
) -> services.subprocess.Popen:
    """A real Celery worker process on `queue`, ready when this returns; `include`: modules
    of tasks of the tests' own it imports too."""
    from portal.celery import app

    hostname = f"{queue}-{uuid.uuid4().hex[:4]}@localhost"
    process = services.celery(
        "worker",
        {**env, "CELERY_QUEUE": queue},
        log,
        "-Q",
        queue,
        "-n",
        hostname,
        "-c",
        str(concurrency),
        "--without-gossip",
        "--without-mingle",
        *(["--include", ",".join(include)] if include else []),
    )
    deadline = time.monotonic() + 60
    while not (app.control.inspect(destination=[hostname], timeout=1).ping() or {}):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the Celery worker did not start; see {log}:\n{log.read_text()[-3000:]}")
    return process


def stop_worker(process) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except services.subprocess.TimeoutExpired:
        process.kill()


def database_url(db: dict) -> str:
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = quote(db.get("USER") or "")
    password = f":{quote(db['PASSWORD'])}" if db.get("PASSWORD") else ""
    return f"postgresql://{user}{password}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


class EverySecondScheduler(PersistentScheduler):
    """Celery beat as deployed, but ticking every second, not every minute: two beats
    started together meet within seconds (`celery beat -S tests.flows:EverySecondScheduler`)."""

    def setup_schedule(self):
        tick = self.app.conf.beat_schedule["tick"]
        self.app.conf.beat_schedule = {"tick": {**tick, "schedule": 1.0}}
        super().setup_schedule()


def postgres_uri(table: str) -> str:
    """The test database as a feature source URI (its tests carry the transactional db mark)."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("PostgresSource needs PostgreSQL: set DATABASE_URL=postgresql://...")
    return f"{database_url(connection.settings_dict)}?table={table}"


def a_split_challenger_and_its_champion(
    owner, validated, feature_table, mailbox, timeout: float = 90
) -> None:
    """A challenger taking 10 % of the entities beside its champion, scored on the feature
    table's two days: each day the two sides are disjoint and cover the slice, an entity
    stays on its side, and the comparison and the report say how many each scored."""
    from scoring.models import Comparison, Role

    deployment = deploy(owner, packages.function_package(), "split", validated)
    deploy(owner, packages.sklearn_package(), "split", validated, role="challenger", share="0.1")
    deployment.refresh_from_db()
    assert deployment.challenger_share == 0.1
    days = [date.today() - timedelta(days=1), date.today()]

    for day in days:
        dispatch.score_now(deployment, day)
        finished = wait_for_runs([deployment.id], timeout=timeout)
        assert {run.status for run in finished} == {"succeeded"}, [r.error for r in finished]

    sides = {}
    for day in days:
        rows = table_rows(deployment.id, day)
        by_role = {
            role: set(rows.filter(rows["role"] == role)["entity_id"].to_list()) for role in Role
        }
        assert not by_role[Role.CHAMPION] & by_role[Role.CHALLENGER]
        assert by_role[Role.CHAMPION] | by_role[Role.CHALLENGER] == set(
            slice_frame(feature_table, day)["entity_id"]
        )
        assert 0.05 < len(by_role[Role.CHALLENGER]) / len(rows) < 0.15
        sides[day] = by_role
    assert sides[days[0]][Role.CHALLENGER] == sides[days[1]][Role.CHALLENGER]
    compared = Comparison.objects.get(deployment=deployment, date=days[1])
    counts = compared.metrics["challenger_rows"], compared.metrics["champion_rows"]
    assert counts == (len(sides[days[1]][Role.CHALLENGER]), len(sides[days[1]][Role.CHAMPION]))
    assert compared.metrics["shared_rows"] == 0 and compared.metrics["spearman"] is None
    (report,) = report_emails(mailbox, days[1], 1)
    assert f"rows {counts[0]} and {counts[1]}" in text_of(report)
