"""Faults injected for real, mid-batch: each ends with every entity exactly once in the
committed partition, the run succeeded (or properly retried), the owner told once per
batch, and nothing left running.

A test that runs batches has its own Redis and its own Celery workers on it (a kill, a
restart or a short visibility timeout must not touch the shared Redis other sessions
use). Models wait at a gate (tests.flows.Gate) while the fault is injected, so it lands
mid-batch for certain. The test process plays beat: it calls tick.

Also covered elsewhere: test_engine's killed-worker test (here again with the emails
and the sandbox it leaves), and test_reports' mail-server-down tests (here through a
real worker and a real refused SMTP connection).
"""

import os
import signal
from datetime import timedelta

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.utils import timezone

from deploy import services
from scoring.models import Batch, Deployment, Notification, PackageVersion, Report, ScoringRun
from scoring.packages import storage
from scoring.reports import mail
from scoring.runs import dispatch, notifications
from tests.factories import packages
from tests.flows import (
    Broker,
    Gate,
    MailServer,
    S3Server,
    assert_settled,
    committed_entities,
    deploy,
    log_lines,
    owner_emails,
    publishing_to,
    released_together,
    report_emails,
    start_worker,
    stop_group,
    subject,
    tick_until,
    wait_for_runs,
    wait_gone,
    wait_until,
)

pytestmark = pytest.mark.django_db(transaction=True)

ENTITIES = list(range(500))  # today's slice of the test feature table


@pytest.fixture
def broker(celery_app_configured, tmp_path):
    app, _ = celery_app_configured
    broker = Broker(tmp_path / "redis")
    with publishing_to(app, broker):
        yield broker
    broker.stop()


@pytest.fixture
def gate():
    gate = Gate()
    yield gate
    gate.close()


@pytest.fixture
def workers(broker, gate, worker_env, tmp_path):
    """start(name, **env): a Celery worker on the test's Redis; all stopped at the end."""
    started = []

    def start(name: str = "worker", **env):
        env = {
            **worker_env,
            "REDIS_URL": broker.url,
            "SANDBOX_TIMEOUT_SECONDS": "120",  # longer than a model waits at the gate
            **env,
        }
        process = start_worker(env, broker.queue, tmp_path / f"{name}.log")
        started.append(process)
        gate.workers.append(process)
        return process

    yield start
    gate.open()  # no sandbox left waiting
    for process in started:
        stop_group(process)


@pytest.fixture
def own_s3(s3_server, settings, tmp_path):
    """A SeaweedFS of the test's own, which the test process and its workers use."""
    server = S3Server(tmp_path / "s3", settings.S3_ACCESS_KEY, settings.S3_SECRET_KEY)
    settings.S3_ENDPOINT_URL = server.url  # the storage follows (and follows back after)
    storage.ensure_buckets()
    yield server
    server.stop()


@pytest.fixture
def mail_server():
    server = MailServer()
    yield server
    server.stop()


def make_due(*deployments_):
    Deployment.objects.filter(id__in=[d.id for d in deployments_]).update(
        next_run_at=timezone.now() - timedelta(seconds=1)
    )


# --- processes killed ---------------------------------------------------------------


def test_a_sandbox_killed_mid_batch_fails_its_model_alone_which_is_retried(
    owner, validated, workers, gate, mailbox
):
    workers()
    gated = deploy(owner, gate.package(), "gated", validated)
    other = deploy(owner, packages.function_package(), "spend", validated)
    make_due(gated, other)
    dispatch.tick()
    [(run_id, pid)] = gate.wait().items()

    assert run_id == ScoringRun.objects.get(deployment=gated).id
    os.kill(pid, signal.SIGKILL)
    [run] = wait_for_runs([gated.id], statuses=("retrying",))
    assert run.error.startswith("the sandbox was killed by signal SIGKILL while scoring"), run.error
    # Beat's next tick comes after the batch has reported (a retry taken before that
    # moves the run to its new batch, and the first report would not show it).
    report_emails(mailbox, run.date, 1)
    gate.open()
    finished = {run.deployment_id: run for run in tick_until([gated.id, other.id])}

    assert (finished[gated.id].status, finished[gated.id].attempts) == ("succeeded", 2)
    assert (finished[other.id].status, finished[other.id].attempts) == ("succeeded", 1)
    day = finished[gated.id].date
    assert committed_entities(gated.id, day) == committed_entities(other.id, day) == ENTITIES
    reports_, failures = owner_emails(mailbox, owner.email, day, reports=2)
    assert [s.split(" — ")[0] for s in reports_] == ["[Dropscore] FAILED", "[Dropscore] OK"]
    assert failures == [f"gated failed for {day} (attempt 1 of 3)"]
    assert_settled()


def test_a_worker_killed_mid_batch_delays_the_run_which_another_worker_finishes_once(
    owner, validated, workers, gate, mailbox, settings
):
    settings.RUN_LEASE_SECONDS = 3  # tick (here, in the test) takes the run back soon
    doomed = workers("doomed")
    gated = deploy(owner, gate.package(), "gated", validated)
    make_due(gated)
    dispatch.tick()
    [pid] = gate.wait().values()

    os.killpg(doomed.pid, signal.SIGKILL)  # the worker and its pool, mid-batch
    doomed.wait()
    wait_gone(pid)  # its sandbox goes with it
    gate.open()
    workers("survivor")
    [run] = tick_until([gated.id])

    assert (run.status, run.attempts, run.rows) == ("succeeded", 2, 500)
    assert committed_entities(gated.id, run.date) == ENTITIES
    # The killed batch never reports: only the batch that scored it does.
    assert_told_once_all_ok(mailbox, owner, run.date)
    assert_settled()


def assert_told_once_all_ok(mailbox, owner, day) -> None:
    """One report, OK, and no failure email: the fault cost the owner nothing to read."""
    reports_, failures = owner_emails(mailbox, owner.email, day, reports=1)
    assert [s.split(" — ")[0] for s in reports_] == ["[Dropscore] OK"] and failures == []


# --- the broker ------------------------------------------------------------------------


def test_redis_restarted_mid_batch_loses_a_queued_message_which_tick_sends_again(
    owner, validated, broker, workers, gate, mailbox, settings
):
    settings.REQUEUE_AFTER_SECONDS = 3  # tick sends a lost batch again after this
    workers()  # two pool processes: two batches score, the third waits in Redis
    names = ["first", "second", "third"]
    deployed = {name: deploy(owner, gate.package(), name, validated) for name in names}
    for deployment in deployed.values():
        dispatch.score_now(deployment)  # a batch each
    scoring = gate.wait(2)
    [waiting] = ScoringRun.objects.exclude(id__in=scoring)
    assert waiting.status == "queued"
    assert broker.queued() == 1  # its message

    broker.restart()
    assert broker.queued() == 0  # lost
    gate.open()
    finished = tick_until([d.id for d in deployed.values()])

    assert [(run.status, run.attempts) for run in finished] == [("succeeded", 1)] * 3
    for deployment in deployed.values():
        assert committed_entities(deployment.id, finished[0].date) == ENTITIES
    reports_, failures = owner_emails(mailbox, owner.email, finished[0].date, reports=3)
    assert len(reports_) == 3 and failures == []
    assert_settled()


def test_a_batch_longer_than_the_visibility_timeout_is_delivered_again_but_runs_once(
    owner, validated, broker, workers, gate, mailbox, tmp_path
):
    short = {"VISIBILITY_TIMEOUT_SECONDS": "5"}
    workers("first", **short)
    deployment = deploy(owner, gate.package(), "gated", validated)
    make_due(deployment)
    dispatch.tick()
    gate.wait()
    wait_until(lambda: broker.unacked_seconds() > 5, "the batch outlives the visibility timeout")
    # A worker starting sweeps Redis for overdue messages (running ones do so every ~100 s).
    workers("second", **short)
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    batch_task = "Task scoring.tasks.run_batch["
    wait_until(lambda: log_lines(logs, batch_task, "] received") >= 2, "Redis delivers it again")
    wait_until(lambda: log_lines(logs, batch_task, "] succeeded") >= 1, "the second delivery ends")
    gate.open()
    [run] = wait_for_runs([deployment.id])

    assert (run.status, run.attempts, run.rows) == ("succeeded", 1, 500)
    assert Batch.objects.count() == 1
    assert committed_entities(deployment.id, run.date) == ENTITIES
    assert_told_once_all_ok(mailbox, owner, run.date)
    assert_settled()


def test_two_beats_at_once_make_one_run_per_version_and_date(
    owner, validated, broker, workers, worker_env, mailbox, tmp_path
):
    worker = workers()
    deployment = deploy(owner, packages.function_package(), "spend", validated)
    env = {**worker_env, "REDIS_URL": broker.url, "CELERY_QUEUE": broker.queue}
    logs = [tmp_path / f"beat-{i}.log" for i in range(2)]
    beats = [
        services.celery(
            "beat",
            env,
            log,
            "-S",
            "tests.flows:EverySecondScheduler",
            "-s",
            str(log.with_suffix(".schedule")),
        )
        for log in logs
    ]
    sent = "Sending due task tick"
    try:
        wait_until(lambda: all(log_lines([log], sent) >= 2 for log in logs), "both beats tick")
        with released_together(Deployment, sessions=2):  # a tick of each beat, side by side
            make_due(deployment)
        [run] = wait_for_runs([deployment.id])
        later = [log_lines([log], sent) + 3 for log in logs]
        wait_until(
            lambda: all(log_lines([log], sent) >= n for log, n in zip(logs, later, strict=True)),
            "both beats tick three more times",
        )
    finally:
        for beat in beats:
            stop_group(beat)

    ticks = log_lines([tmp_path / "worker.log"], "Task scoring.tasks.tick[", "] succeeded")
    assert ticks >= 10, "the worker ran both beats' ticks"
    assert (run.status, run.attempts) == ("succeeded", 1)
    assert ScoringRun.objects.count() == 1
    assert Batch.objects.filter(runs__isnull=False).distinct().count() == 1
    assert committed_entities(deployment.id, run.date) == ENTITIES
    reports_, failures = owner_emails(mailbox, owner.email, run.date, reports=1)
    assert len(reports_) == 1 and failures == []
    assert_settled()
    assert worker.poll() is None


# --- the database ----------------------------------------------------------------------


@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="drops PostgreSQL connections with pg_terminate_backend; CI runs on PostgreSQL",
)
def test_database_connections_dropped_mid_batch_the_worker_reconnects_and_finishes(
    owner, validated, workers, gate, mailbox
):
    workers()
    deployment = deploy(owner, gate.package(), "gated", validated)
    make_due(deployment)
    dispatch.tick()
    gate.wait()
    run = ScoringRun.objects.get(deployment=deployment)
    beating = ScoringRun.objects.filter(id=run.id, heartbeat_at__gt=timezone.now())
    wait_until(beating.exists, "the heartbeat has a connection too", timeout=30)

    with connection.cursor() as cursor:  # every connection of the worker, not ours
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        [[dropped]] = cursor.fetchall()
    dropped_at = timezone.now()
    assert dropped >= 2  # the batch's and its heartbeat's at least
    beating = ScoringRun.objects.filter(id=run.id, heartbeat_at__gt=dropped_at)
    wait_until(beating.exists, "the heartbeat goes on", timeout=30)
    gate.open()
    [run] = wait_for_runs([deployment.id])

    assert (run.status, run.attempts, run.rows) == ("succeeded", 1, 500)
    assert committed_entities(deployment.id, run.date) == ENTITIES
    assert_told_once_all_ok(mailbox, owner, run.date)
    assert_settled()


# --- S3 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("through", ["api", "web"])
def test_s3_stopped_during_an_upload_gives_a_clear_error_and_stores_nothing(
    through, owner, own_s3, api, client, settings
):
    weights = np.random.default_rng(0).random(2_200_000)  # 17 MB: a multipart upload
    data = packages.dumps({**packages.function_package(), "meta": {"weights": weights}})
    stopped = []

    def stop_s3(**_):  # once the upload has begun: its first part is on its way
        if not stopped:
            own_s3.stop()
            stopped.append(True)

    storage.packages().connection.meta.client.meta.events.register(
        "before-send.s3.UploadPart", stop_s3
    )
    upload = SimpleUploadedFile("big.dill", data)
    if through == "api":
        response = api.post("/api/v1/models/", {"file": upload, "name": "big"}, format="multipart")
        message = response.json()["detail"]
    else:
        client.force_login(owner)
        response = client.post("/models/upload/", {"file": upload, "name": "big"})
        message = response.json()["error"]

    assert stopped
    assert response.status_code == 503
    assert message.startswith("storage is unavailable (") and message.endswith(
        "); nothing was stored, try again"
    ), message
    assert not Deployment.objects.exists() and not PackageVersion.objects.exists()
    own_s3.start()
    storage.reconnect()
    listing = storage.client().list_objects_v2(Bucket=settings.MODELS_BUCKET)
    assert listing.get("Contents", []) == []


def test_s3_stopped_during_a_batch_fails_the_attempt_which_succeeds_once_s3_is_back(
    owner, validated, own_s3, workers, gate, mailbox
):
    workers(S3_ENDPOINT_URL=own_s3.url)
    deployment = deploy(owner, gate.package(), "gated", validated)
    make_due(deployment)
    dispatch.tick()
    gate.wait()

    own_s3.stop()
    gate.open()
    [run] = wait_for_runs([deployment.id], statuses=("retrying",))
    assert run.error.startswith("writing the scores failed"), run.error
    report_emails(mailbox, run.date, 1)  # the failed batch reports before beat's next tick
    own_s3.start()
    [run] = tick_until([deployment.id])

    assert (run.status, run.attempts, run.rows) == ("succeeded", 2, 500)
    assert committed_entities(deployment.id, run.date) == ENTITIES
    reports_, failures = owner_emails(mailbox, owner.email, run.date, reports=2)
    assert [s.split(" — ")[0] for s in reports_] == ["[Dropscore] FAILED", "[Dropscore] OK"]
    assert failures == [f"gated failed for {run.date} (attempt 1 of 3)"]
    assert_settled()


# --- mail -------------------------------------------------------------------------------


def test_smtp_down_when_a_report_is_due_the_run_succeeds_and_tick_sends_it_later(
    owner, validated, workers, mailbox, mailoutbox
):
    workers(
        EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=str(services.free_port()),  # nothing listens there
    )
    deployment = deploy(owner, packages.function_package(), "spend", validated)
    make_due(deployment)
    dispatch.tick()
    [run] = wait_for_runs([deployment.id])
    assert (run.status, run.attempts, run.rows) == ("succeeded", 1, 500)
    assert committed_entities(deployment.id, run.date) == ENTITIES
    wait_until(lambda: Report.objects.filter(send_attempts=1).exists(), "the worker tried")
    [report] = Report.objects.all()
    assert report.sent_at is None and "refused" in report.send_error.lower(), report.send_error

    # Tick, once the back-off has passed, with the mail server back (Django's outbox).
    later = timezone.now() + timedelta(minutes=3)
    assert mail.send_due_reports(later) == 1
    assert mail.send_due_reports(later + timedelta(hours=3)) == 0
    assert [(m.to, m.subject.split(" — ")[0]) for m in mailoutbox] == [
        ([owner.email], "[Dropscore] OK")
    ]
    assert mailbox() == []
    assert_settled()


# Sending failure emails from the chunk loop, each would hold the batch this long.
EMAIL_TIMEOUT = 90


def test_a_mail_server_that_never_answers_stalls_no_batch_and_the_emails_go_out_once_it_does(
    owner, validated, workers, mail_server, mailoutbox, tmp_path
):
    workers(
        EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=str(mail_server.port),
        EMAIL_TIMEOUT=str(EMAIL_TIMEOUT),
    )
    retrying = deploy(owner, packages.broken_package(), "retrying", validated)
    doomed = deploy(owner, packages.broken_package(max_attempts=1), "doomed", validated)
    fine = deploy(owner, packages.function_package(), "spend", validated)
    make_due(retrying, doomed, fine)
    batch = dispatch.tick()
    finished = Batch.objects.filter(id=batch.id, finished_at__isnull=False)
    wait_until(finished.exists, "the batch finishes", timeout=EMAIL_TIMEOUT)

    batch = finished.get()
    seconds = (batch.finished_at - batch.started_at).total_seconds()
    # Inline, the two failure emails would take two whole timeouts.
    assert seconds < EMAIL_TIMEOUT / 2, seconds
    runs = {run.deployment_id: run for run in ScoringRun.objects.all()}
    assert [runs[d.id].status for d in (retrying, doomed, fine)] == [
        "retrying",
        "failed",
        "succeeded",
    ]
    # A worker took the failure emails at once, and waits for the greeting.
    wait_until(lambda: mail_server.connections, "a worker connects to the mail server")
    assert mail_server.received == []
    assert not Notification.objects.filter(sent_at__isnull=False).exists()

    mail_server.answer()
    wait_until(lambda: len(mail_server.received) >= 3, "the emails go out", timeout=30)
    day = runs[fine.id].date
    assert sorted(subject(m) for m in mail_server.received) == [
        f"Gave up: doomed failed 1 times for {day}",
        f"[Dropscore] FAILED — doomed and 1 more failed (3 models, {day})",
        f"retrying failed for {day} (attempt 1 of 3)",
    ]
    # Each failure asked for a send, and every sender is done: none sends it again.
    logs = [tmp_path / "worker.log"]
    wait_until(
        lambda: (
            log_lines(logs, "Task scoring.tasks.send_notifications[", "] succeeded") == 2
            and log_lines(logs, "Task scoring.tasks.run_batch[", "] succeeded") == 1
        ),
        "the worker's senders are done",
        timeout=30,
    )
    assert len(mail_server.received) == 3
    assert list(Notification.objects.values_list("send_attempts", "send_error")) == [(0, "")] * 2
    assert not Notification.objects.filter(sent_at__isnull=True).exists()
    # Tick, hours later, has nothing left to send.
    assert notifications.send_due(timezone.now() + timedelta(hours=3)) == 0
    assert mailoutbox == []
    assert_settled()
