"""Failure and give-up emails: queued with the failure, sent from the database send queue.

Runs are written to the database as a worker leaves them: no worker. A mail server that
never answers, through a real worker and a real batch: tests/test_faults_storage_and_mail.py.
"""

import logging
import threading
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from portal.celery import app
from scoring.models import Batch, Deployment, Notification, PackageVersion, ScoringRun
from scoring.reports import outbox
from scoring.runs import lifecycle, notifications
from tests.factories.runs import make_models, with_champions
from tests.faults import closed_port, publishing_to, released_together

pytestmark = pytest.mark.django_db

DAY = date(2026, 11, 23)
SLICE = date(2026, 11, 22)
# Tick's clock, a day after the rows are written: their gathering time is over.
NOW = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
LOCMEM = "django.core.mail.backends.locmem.EmailBackend"


def running_run(user, attempts: int = 1, max_attempts: int = 3) -> ScoringRun:
    """A run of the model "churn" in its `attempts`-th attempt, as a worker claimed it."""
    deployment = Deployment.objects.create(
        owner=user, name="churn", slug="churn", email="risk@bank.example"
    )
    version = PackageVersion.objects.create(
        deployment=deployment,
        number=1,
        file=f"{user.username}/churn/v1.dill",
        filename="churn.dill",
        size=2048,
        sha256="0" * 64,
        state=PackageVersion.State.VALID,
        package={"features": ["age"], "params": {"retry_delay_minutes": 45}},
    )
    with_champions([deployment])
    return ScoringRun.objects.create(
        deployment=deployment,
        version=version,
        date=DAY,
        status=ScoringRun.Status.RUNNING,
        attempts=attempts,
        max_attempts=max_attempts,
        started_at=NOW - timedelta(minutes=5),
        heartbeat_at=NOW - timedelta(minutes=5),
    )


# --- queued with the failure -------------------------------------------------------


def test_a_failed_attempt_queues_its_email_and_sends_nothing_itself(
    owner, mailoutbox, django_capture_on_commit_callbacks
):
    run = running_run(owner)
    with django_capture_on_commit_callbacks() as callbacks:
        lifecycle.fail(run, "ValueError: column 'income' is missing", SLICE)

    run.refresh_from_db()
    assert run.status == "retrying"
    [notification] = Notification.objects.all()
    assert (notification.run, notification.attempt, notification.gave_up) == (run, 1, False)
    assert notification.error == "ValueError: column 'income' is missing"
    assert (notification.slice_date, notification.retry_at) == (SLICE, run.next_attempt_at)
    assert notification.sent_at is None and notification.send_attempts == 0
    # Once committed, a worker is asked to send it.
    assert callbacks == [notifications.send_soon]
    assert mailoutbox == []


def test_one_failed_attempt_makes_one_email(owner):
    run = running_run(owner)
    lifecycle.fail(run, "boom")
    notifications.queue(run)  # told twice of the same failure

    assert Notification.objects.count() == 1


def test_score_now_after_giving_up_counts_from_one_again_and_each_attempt_has_its_email(owner):
    run = running_run(owner, attempts=1, max_attempts=1)
    lifecycle.fail(run, "boom")
    lifecycle.request_run(run.deployment, DAY)
    [run] = lifecycle.claim_batch(run.batch_id)  # the new attempt 1
    lifecycle.fail(run, "boom again")

    assert list(Notification.objects.order_by("id").values_list("attempt", "error")) == [
        (1, "boom"),
        (1, "boom again"),
    ]


def test_a_worker_gone_silent_on_the_last_attempt_queues_the_give_up_email(owner):
    run = running_run(owner, attempts=3, max_attempts=3)

    assert lifecycle.take_back(run, NOW) is False
    [notification] = Notification.objects.all()
    assert (notification.attempt, notification.gave_up) == (3, True)
    assert notification.error == "the worker stopped answering during attempt 3"
    assert notification.batch_id == run.batch_id


def test_a_worker_gone_silent_before_the_last_attempt_queues_no_email(owner):
    run = running_run(owner, attempts=1)

    assert lifecycle.take_back(run, NOW) is True
    assert not Notification.objects.exists()


def test_a_broker_that_is_down_does_not_fail_the_bookkeeping(
    owner, caplog, django_capture_on_commit_callbacks
):
    run = running_run(owner)
    nowhere = SimpleNamespace(url=f"redis://127.0.0.1:{closed_port()}/0", queue="nowhere")
    with publishing_to(app, nowhere), caplog.at_level(logging.ERROR):
        with django_capture_on_commit_callbacks(execute=True):
            lifecycle.fail(run, "boom")

    run.refresh_from_db()
    assert run.status == "retrying"
    assert Notification.objects.filter(run=run, sent_at__isnull=True).exists()  # for tick
    assert "could not ask a worker to send the failure emails" in caplog.text


# --- the email ---------------------------------------------------------------------


def test_the_email_names_the_attempt_the_error_and_the_next_attempt(owner, mailoutbox):
    run = running_run(owner)
    lifecycle.fail(run, "ValueError: column 'income' is missing", SLICE)
    run.refresh_from_db()

    assert notifications.send_due(NOW) == 1
    [message] = mailoutbox
    assert message.to == ["risk@bank.example"]
    assert message.subject == f"churn failed for {DAY} (attempt 1 of 3)"
    assert "ValueError: column 'income' is missing" in message.body
    assert f"(feature slice {SLICE})" in message.body
    retry = f"{run.next_attempt_at:%Y-%m-%d %H:%M} UTC"
    assert f"This was attempt 1 of 3. The next attempt is at {retry}." in message.body
    assert f"The next attempt is at <b>{retry}</b>" in message.alternatives[0][0]


def test_the_last_attempt_says_it_gave_up(owner, mailoutbox):
    run = running_run(owner, attempts=3, max_attempts=3)
    lifecycle.fail(run, "RuntimeError: the source system is down")

    assert notifications.send_due(NOW) == 1
    [message] = mailoutbox
    assert message.subject == f"Gave up: churn failed 3 times for {DAY}"
    assert "This was attempt 3 of 3: Dropscore gave up on this date." in message.body
    assert "next attempt" not in message.body


def test_an_email_sent_late_tells_of_its_own_attempt(owner, mailoutbox):
    run = running_run(owner)
    lifecycle.fail(run, "first error", SLICE)
    retry_at = ScoringRun.objects.get(id=run.id).next_attempt_at
    # The mail server was down: by the time it is back, the second attempt failed too.
    ScoringRun.objects.filter(id=run.id).update(status="running", attempts=2, error="")
    lifecycle.fail(ScoringRun.objects.get(id=run.id), "second error", SLICE)

    assert notifications.send_due(NOW) == 2
    [late] = mailoutbox  # the same moment (no batch): one email with both attempts
    first = late.body.split("== ")[1:]
    [first] = [part for part in first if "first error" in part]
    assert "second error" not in first
    assert f"attempt 1 of 3; next attempt at {retry_at:%Y-%m-%d %H:%M} UTC" in first


def test_a_model_without_an_email_address_has_nothing_to_send(owner, mailoutbox):
    run = running_run(owner)
    Deployment.objects.filter(id=run.deployment_id).update(email="")
    lifecycle.fail(run, "boom")

    assert notifications.send_due(NOW) == 1  # done with: nothing to send
    assert mailoutbox == []
    assert Notification.objects.get().sent_at == NOW


# --- the send queue ----------------------------------------------------------------


def test_a_mail_server_that_is_down_leaves_the_email_for_tick(owner, smtp_down, mailoutbox):
    lifecycle.fail(running_run(owner), "boom")

    assert notifications.send_due(NOW) == 0
    notification = Notification.objects.get()
    assert (notification.sent_at, notification.send_attempts) == (None, 1)
    assert "refused" in notification.send_error.lower(), notification.send_error
    # Tick backs off: not again within two minutes.
    assert notifications.send_due(NOW + timedelta(minutes=1)) == 0

    smtp_down.EMAIL_BACKEND = LOCMEM
    assert notifications.send_due(NOW + timedelta(minutes=3)) == 1
    assert notifications.send_due(NOW + timedelta(hours=3)) == 0
    assert [m.subject for m in mailoutbox] == [f"churn failed for {DAY} (attempt 1 of 3)"]
    notification.refresh_from_db()
    assert (notification.sent_at, notification.send_error) == (NOW + timedelta(minutes=3), "")


def test_an_email_being_sent_is_not_taken_by_tick(owner, mailoutbox):
    lifecycle.fail(running_run(owner), "boom")
    assert outbox.claim(Notification.objects.get(), NOW)  # a worker is sending it right now

    assert notifications.send_due(NOW + timedelta(seconds=30)) == 0
    assert mailoutbox == []


def send_from_two_senders_at_once() -> list[int]:
    """What each of two senders sent, both reading the queue at the same moment."""
    sent = []

    def sender():
        sent.append(notifications.send_due(NOW))
        connection.close()  # this thread's own

    senders = [threading.Thread(target=sender) for _ in range(2)]
    with released_together(Notification, sessions=2):
        for thread in senders:
            thread.start()
    for thread in senders:
        thread.join()
    return sent


@pytest.mark.django_db(transaction=True)
def test_two_senders_at_once_send_the_email_once(owner, mailoutbox):
    run = running_run(owner)
    # Written as fail() writes it (fail() itself would ask the worker to send it).
    Notification.objects.create(
        run=run, attempt=1, started_at=run.started_at, gave_up=False, error="boom"
    )
    sent = send_from_two_senders_at_once()

    assert sorted(sent) == [0, 1]
    assert len(mailoutbox) == 1


# --- failures in bulk: one email per address and batch ---------------------------------


def running_runs(user, batch: Batch, count: int, prefix: str) -> list[ScoringRun]:
    """`count` models of `user` in their first attempt in `batch`, as a worker claimed them."""
    models = make_models(user, count, prefix=prefix)
    return [
        ScoringRun.objects.create(
            deployment=model,
            version=model.versions.get(),
            batch=batch,
            date=DAY,
            status=ScoringRun.Status.RUNNING,
            attempts=1,
            started_at=NOW - timedelta(minutes=5),
            heartbeat_at=NOW - timedelta(minutes=5),
        )
        for model in models
    ]


SOURCE_DOWN = "cannot connect to the feature source: connection refused"


def test_a_batch_whose_models_all_fail_sends_each_address_one_email(owner, outsider, mailoutbox):
    batch = Batch.objects.create()
    for run in running_runs(owner, batch, 30, "churn") + running_runs(outsider, batch, 20, "fraud"):
        lifecycle.fail(run, SOURCE_DOWN, SLICE)

    assert Notification.objects.count() == 50  # the record: one row per failed attempt
    assert notifications.send_due(NOW) == 50
    assert sorted(message.to[0] for message in mailoutbox) == [owner.email, outsider.email]
    alice = next(message for message in mailoutbox if message.to == [owner.email])
    assert alice.subject == f"30 models failed for {DAY}"
    # One error, read once, with its attempt and next retry, and the first 25 models named.
    assert alice.body.count(SOURCE_DOWN) == 1
    retry = ScoringRun.objects.filter(batch=batch).first().next_attempt_at
    assert f"attempt 1 of 3; next attempt at {retry:%Y-%m-%d %H:%M} UTC" in alice.body
    named = ", ".join(f"churn-{i:03d}" for i in range(25))
    assert f"Models: {named} and 5 more" in alice.body
    assert "/?status=failed" in alice.body
    html = alice.alternatives[0][0]
    assert html.count(SOURCE_DOWN) == 1 and "and 5 more" in html
    assert f"/models/{ScoringRun.objects.get(deployment__name='churn-024').deployment_id}/" in html
    assert notifications.send_due(NOW + timedelta(hours=3)) == 0
    assert len(mailoutbox) == 2


def test_different_errors_are_listed_apart_each_model_with_its_own_facts(owner, mailoutbox):
    batch = Batch.objects.create()
    runs = running_runs(owner, batch, 4, "churn")
    lifecycle.fail(runs[0], SOURCE_DOWN, SLICE)
    lifecycle.fail(runs[1], SOURCE_DOWN, SLICE)
    ScoringRun.objects.filter(id=runs[2].id).update(attempts=3)
    runs[2].attempts = 3
    lifecycle.fail(runs[2], SOURCE_DOWN, SLICE)  # the last attempt: gave up
    lifecycle.fail(runs[3], "2 features are missing from slice 2026-11-22: age, plan", SLICE)

    assert notifications.send_due(NOW) == 4
    [message] = mailoutbox
    assert message.subject == f"4 models failed for {DAY} (1 gave up)"
    body = message.body
    assert body.index(SOURCE_DOWN) < body.index("features are missing")  # the most shared first
    assert "== 3 models: " + SOURCE_DOWN in body
    assert f"- churn-002 ({DAY}, slice {SLICE}): attempt 3 of 3; gave up." in body
    assert "- churn-000 (" in body and "- churn-001 (" in body
    assert "== 1 model: 2 features are missing" in body
    assert "Model: churn-003" in body


def test_a_retry_that_fails_in_another_batch_is_another_email(owner, mailoutbox):
    first, second = Batch.objects.create(), Batch.objects.create()
    [run] = running_runs(owner, first, 1, "churn")
    lifecycle.fail(run, SOURCE_DOWN, SLICE)
    assert notifications.send_due(NOW) == 1
    ScoringRun.objects.filter(id=run.id).update(status="running", attempts=2, batch=second)
    lifecycle.fail(ScoringRun.objects.get(id=run.id), SOURCE_DOWN, SLICE)
    [other] = running_runs(owner, second, 1, "spend")
    lifecycle.fail(other, SOURCE_DOWN, SLICE)

    assert notifications.send_due(NOW) == 2
    assert [m.subject for m in mailoutbox] == [
        f"churn-000 failed for {DAY} (attempt 1 of 3)",
        f"2 models failed for {DAY}",
    ]


def test_failures_wait_for_the_others_of_their_moment(owner, mailoutbox, settings):
    settings.FAILURE_EMAIL_GATHER_SECONDS = 60
    batch = Batch.objects.create()
    runs = running_runs(owner, batch, 3, "churn")
    lifecycle.fail(runs[0], SOURCE_DOWN, SLICE)
    written = Notification.objects.get().created_at

    assert notifications.send_due(written + timedelta(seconds=30)) == 0
    for run in runs[1:]:
        lifecycle.fail(run, SOURCE_DOWN, SLICE)
    assert notifications.send_due(written + timedelta(seconds=61)) == 3
    assert [m.subject for m in mailoutbox] == [f"3 models failed for {DAY}"]


def test_a_thousand_failures_make_an_email_of_bounded_size(owner, mailoutbox):
    batch = Batch.objects.create()
    models = make_models(owner, 1000, prefix="m")
    versions = {v.deployment_id: v for v in PackageVersion.objects.filter(deployment__in=models)}
    runs = ScoringRun.objects.bulk_create(
        ScoringRun(
            deployment=m,
            version=versions[m.id],
            batch=batch,
            date=DAY,
            status="retrying",
            attempts=1,
            started_at=NOW,
        )
        for m in models
    )
    Notification.objects.bulk_create(
        Notification(
            run=run, batch=batch, attempt=1, started_at=NOW, gave_up=False, error=SOURCE_DOWN
        )
        for run in runs
    )

    with CaptureQueriesContext(connection) as queries:
        assert notifications.send_due(NOW) == 1000
    [message] = mailoutbox
    assert message.subject == f"1,000 models failed for {DAY}"
    assert "and 975 more" in message.body
    assert len(message.message().as_bytes()) < 20_000
    assert len(queries) < 12, [q["sql"][:80] for q in queries]


# --- the give-up email when the worker kept dying ----------------------------------------


def test_a_run_whose_worker_kept_dying_gives_up_saying_so(owner, mailoutbox):
    run = running_run(owner, attempts=1)
    for attempt in (1, 2, 3):
        run = ScoringRun.objects.select_related("deployment", "version").get(id=run.id)
        if attempt > 1:
            [run] = lifecycle.claim_batch(run.batch_id)
            run.heartbeat_at = NOW - timedelta(minutes=5)
            ScoringRun.objects.filter(id=run.id).update(heartbeat_at=run.heartbeat_at)
        lifecycle.take_back(run, NOW)

    run.refresh_from_db()
    assert (run.status, run.error) == (
        "failed",
        "the worker stopped answering during attempts 1, 2 and 3",
    )
    assert notifications.send_due(NOW) == 1
    [message] = mailoutbox
    assert message.subject == f"Gave up: churn failed 3 times for {DAY} (its worker kept dying)"
    for body in (message.body, message.alternatives[0][0]):
        assert (
            "stopped answering (its process died or was killed) during attempts 1, 2 and 3 of 3"
            in body
        )
        assert "This is not a problem in your data" in body
        assert "ask them to check the workers' logs and memory" in body
        assert "Fix the model or the data" not in body


def test_a_give_up_after_one_lost_worker_names_only_that_attempt(owner, mailoutbox):
    run = running_run(owner, attempts=3, max_attempts=3)
    ScoringRun.objects.filter(id=run.id).update(error="ValueError: attempt 2 failed")
    run.refresh_from_db()

    lifecycle.take_back(run, NOW)
    assert notifications.send_due(NOW) == 1
    assert "during attempt 3 of 3, so Dropscore gave up" in mailoutbox[0].body


def test_models_given_up_on_because_their_workers_kept_dying_are_told_so_in_one_email(
    owner, mailoutbox
):
    batch = Batch.objects.create()
    runs = running_runs(owner, batch, 30, "churn")
    ScoringRun.objects.filter(id__in=[run.id for run in runs]).update(
        attempts=3, error="the worker stopped answering during attempts 1 and 2"
    )
    for run in ScoringRun.objects.filter(batch=batch).select_related("deployment", "version"):
        lifecycle.take_back(run, NOW)

    assert notifications.send_due(NOW) == 30
    [message] = mailoutbox
    assert message.subject == f"Gave up: 30 models failed for {DAY}"
    for body in (message.body, message.alternatives[0][0]):
        assert body.count("the worker stopped answering during attempts 1, 2 and 3") == 1
        assert "gave up: the worker kept dying (attempts 1, 2 and 3)" in body
        assert "This is not a problem in your data" in body
        assert "Fix the model or the data" not in body


def test_a_mail_server_that_is_down_keeps_the_failures_of_a_moment_together(
    owner, smtp_down, mailoutbox
):
    batch = Batch.objects.create()
    for run in running_runs(owner, batch, 3, "churn"):
        lifecycle.fail(run, SOURCE_DOWN, SLICE)

    assert notifications.send_due(NOW) == 0
    assert list(Notification.objects.values_list("send_attempts", flat=True)) == [1, 1, 1]
    assert notifications.send_due(NOW + timedelta(minutes=1)) == 0  # backing off, together

    smtp_down.EMAIL_BACKEND = LOCMEM
    assert notifications.send_due(NOW + timedelta(minutes=3)) == 3
    assert [m.subject for m in mailoutbox] == [f"3 models failed for {DAY}"]
    assert not Notification.objects.filter(sent_at__isnull=True).exists()


@pytest.mark.django_db(transaction=True)
def test_two_senders_at_once_send_the_failures_of_a_batch_in_one_email(owner, mailoutbox):
    batch = Batch.objects.create()
    for run in running_runs(owner, batch, 30, "churn"):
        # Written as fail() writes them (fail() itself would ask the worker to send them).
        Notification.objects.create(
            run=run, batch=batch, attempt=1, started_at=run.started_at, gave_up=False, error="x"
        )
    sent = send_from_two_senders_at_once()

    assert sorted(sent) == [0, 30]
    assert len(mailoutbox) == 1 and "Models: churn-000" in mailoutbox[0].body
