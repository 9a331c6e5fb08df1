"""Faults injected for real, mid-batch: each ends with every entity exactly once in the
committed partition, the run succeeded (or properly retried), the owner told once per
batch, and nothing left running. Here processes killed, the broker and the database;
S3 and the mail server: tests/test_faults_storage_and_mail.py.

A test that runs batches has its own Redis and its own Celery workers on it (a kill, a
restart or a short visibility timeout must not touch the shared Redis other sessions
use): the fixtures broker, gate and workers, in tests/conftest.py. Models wait at a gate
(tests.faults.Gate) while the fault is injected, so it lands mid-batch for certain. The
test process plays beat: it calls tick.

Also covered elsewhere: test_engine's killed-worker test (here again with the emails
and the sandbox it leaves).
"""

import os
import signal

import pytest
from django.db import connection
from django.utils import timezone

from deploy import services
from scoring.models import Batch, Deployment, Notification, ScoringRun
from scoring.runs import dispatch
from tests.factories import packages
from tests.factories.runs import make_models
from tests.faults import closed_port, released_together, stop_group, wait_gone
from tests.flows import (
    ENTITIES,
    assert_settled,
    committed_entities,
    deploy,
    failure_emails,
    log_lines,
    make_due,
    notifications_sent,
    owner_emails,
    report_emails,
    subject,
    tick_until,
    wait_for_runs,
    wait_until,
)

pytestmark = pytest.mark.django_db(transaction=True)


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


# --- the feature source ------------------------------------------------------------------


def test_the_feature_source_down_for_50_models_of_two_owners_sends_one_email_to_each(
    owner, outsider, workers, mailbox
):
    # A PostgreSQL feature source on a port nobody listens on: every model fails to read it.
    workers(FEATURES_URI=f"postgresql://postgres@127.0.0.1:{closed_port()}/features?table=x")
    fleets = {
        owner.email: make_models(owner, 25, "churn"),
        outsider.email: make_models(outsider, 25, "fraud"),
    }
    models = [model for fleet in fleets.values() for model in fleet]
    make_due(*models)
    dispatch.tick()

    runs = wait_for_runs([model.id for model in models], statuses=("retrying",))
    assert len(runs) == 50
    assert all("cannot connect to the feature source" in run.error for run in runs)
    notifications_sent()
    emails = failure_emails(mailbox())
    assert sorted(message["To"] for message in emails) == sorted(fleets)
    day = runs[0].date
    for message in emails:
        assert subject(message) == f"25 models failed for {day}"
        body = message.get_payload(0).get_payload(decode=True).decode()
        assert body.count("cannot connect to the feature source") == 1
        for model in fleets[message["To"]]:
            assert model.name in body
    assert Notification.objects.filter(sent_at__isnull=False).count() == 50  # the record
