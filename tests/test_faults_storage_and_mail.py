"""Faults injected for real, mid-batch, in what a batch writes to and sends through: S3
stopped (during an upload, during a batch) and the mail server down or never answering.
Each ends with every entity exactly once in the committed partition, the run succeeded (or
properly retried), the owner told once per batch, and nothing left running. Processes
killed, the broker and the database: tests/test_faults.py.

A test that runs batches has its own Redis and its own Celery workers on it: the fixtures
broker, gate and workers, in tests/conftest.py. Models wait at a gate (tests.faults.Gate)
while the fault is injected, so it lands mid-batch for certain. The test process plays
beat: it calls tick.

Also covered elsewhere: test_reports' mail-server-down tests (here through a real worker
and a real refused SMTP connection).
"""

from datetime import timedelta

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from deploy import services
from scoring.models import Batch, Deployment, Notification, PackageVersion, Report, ScoringRun
from scoring.packages import storage
from scoring.reports import mail
from scoring.runs import dispatch, notifications
from tests.factories import packages
from tests.faults import MailServer, S3Server
from tests.flows import (
    ENTITIES,
    assert_settled,
    committed_entities,
    deploy,
    log_lines,
    make_due,
    owner_emails,
    report_emails,
    subject,
    tick_until,
    wait_for_runs,
    wait_until,
)

pytestmark = pytest.mark.django_db(transaction=True)


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
    # A file smaller than one part goes up whole once its last chunk is written.
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
    wait_until(lambda: len(mail_server.received) >= 2, "the emails go out", timeout=30)
    day = runs[fine.id].date
    # The two failures of the batch: one email.
    assert sorted(subject(m) for m in mail_server.received) == [
        f"2 models failed for {day} (1 gave up)",
        f"[Dropscore] FAILED — doomed and 1 more failed (3 models, {day})",
    ]
    # Every sender is done: none sends it again.
    logs = [tmp_path / "worker.log"]
    wait_until(
        lambda: (
            log_lines(logs, "Task scoring.tasks.send_notifications[", "]") >= 1
            and log_lines(logs, "Task scoring.tasks.send_notifications[", "] succeeded")
            == log_lines(logs, "Task scoring.tasks.send_notifications[", "] received")
            and log_lines(logs, "Task scoring.tasks.run_batch[", "] succeeded") == 1
        ),
        "the worker's senders are done",
        timeout=30,
    )
    assert len(mail_server.received) == 2
    assert list(Notification.objects.values_list("send_attempts", "send_error")) == [(0, "")] * 2
    assert not Notification.objects.filter(sent_at__isnull=True).exists()
    # Tick, hours later, has nothing left to send.
    assert notifications.send_due(timezone.now() + timedelta(hours=3)) == 0
    assert mailoutbox == []
    assert_settled()
