"""A fleet of models in one batch, through real workers on the test's own Redis: every
model's run commits (or fails alone), each entity once per partition, no worker over its
sandbox pool or its descriptor limit, and a worker killed mid-fleet loses nothing.

Fleets are made in seconds: one package is deployed and validated, the rest are copies
of it in the models bucket (tests.flows.clone_models). The test process plays beat.
"""

import contextlib
import io
import os
import re
import shutil
import signal
import threading
from collections import Counter
from datetime import date, timedelta

import numpy as np
import psutil
import pytest
from celery import current_app

from scoring.models import BatchPart, PackageVersion, Report, ScoringRun
from scoring.packages import deployments
from scoring.runs import dispatch, lifecycle
from tests.factories import cast, packages
from tests.faults import wait_gone
from tests.flows import (
    ENTITIES,
    assert_settled,
    clone_models,
    committed_partitions,
    deploy,
    make_due,
    report_emails,
    tick_until,
    wait_for_runs,
    wait_until,
)

pytestmark = pytest.mark.django_db(transaction=True)


def fleet(owner, validated, count: int, prefix: str, package=None) -> list:
    first = deploy(owner, package or packages.function_package(), f"{prefix}-first", validated)
    return [first, *clone_models(first, owner, count - 1, prefix)]


def limit_descriptors(worker, limit: int) -> None:
    """Lower the open-files limit of a running worker and of every process it started.

    A sandbox alive at that moment (a user of its own, confined) refuses, and one may
    have ended since it was listed: sandboxes set their own, lower limit anyway."""
    root = psutil.Process(worker.pid)
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.AccessDenied, psutil.NoSuchProcess):
            process.rlimit(psutil.RLIMIT_NOFILE, (limit, limit))


class SandboxCounter(threading.Thread):
    """Counts, ten times a second, each zygote's live sandboxes (its children working in a
    run's folder) among the workers' processes; keeps the most it saw."""

    def __init__(self, workers: list):
        super().__init__(daemon=True)
        self.workers = workers
        self.most = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.1):
            live = Counter()
            for worker in self.workers:
                with contextlib.suppress(psutil.Error):
                    for process in psutil.Process(worker.pid).children(recursive=True):
                        with contextlib.suppress(OSError, psutil.Error):
                            if "dropscore-run-" in os.readlink(f"/proc/{process.pid}/cwd"):
                                live[process.ppid()] += 1
            self.most = max(self.most, *live.values(), 0)

    def __enter__(self) -> "SandboxCounter":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stopped.set()
        self.join()


def assert_all_scored_once(models: list, finished: list) -> None:
    """Every model's run succeeded, and its partition holds each entity exactly once."""
    assert Counter(run.status for run in finished) == {"succeeded": len(models)}, {
        run.error for run in finished if run.error
    }
    partitions = committed_partitions(finished[0].date)
    assert all(partitions[m.id] == ENTITIES for m in models)


def reported_runs() -> Counter:
    """How many reports each run is in."""
    return Counter(run.id for report in Report.objects.all() for run in report.runs.all())


def pool_lines(logs) -> list[tuple[int, int]]:
    """(sandboxes alive at most, pool) of every unit the workers scored, from their logs."""
    pattern = re.compile(r"at most (\d+) sandboxes alive \(pool (\d+)\)")
    return [
        (int(most), int(pool)) for log in logs for most, pool in pattern.findall(log.read_text())
    ]


def test_a_fleet_beyond_the_workers_descriptor_limit_scores_every_model(
    owner, validated, workers, mailbox, tmp_path
):
    worker = workers("fleet", SANDBOX_POOL="2")
    # A sandbox costs its worker four descriptors: one sandbox a model would need 1,200.
    limit_descriptors(worker, 256)
    models = fleet(owner, validated, 300, "spend")
    make_due(*models)
    dispatch.tick()
    finished = wait_for_runs([m.id for m in models], timeout=240)

    assert_all_scored_once(models, finished)
    assert set(pool_lines([tmp_path / "fleet.log"])) == {(2, 2)}
    assert_settled()


def test_300_models_of_two_owners_through_two_workers_never_exceed_the_pool(
    owner, validated, workers, mailbox, tmp_path
):
    other = cast.make("outsider")
    settings = {"SANDBOX_POOL": "2", "SHARD_MODELS": "60"}
    started = [workers("first", **settings), workers("second", **settings)]
    models = fleet(owner, validated, 200, "churn", packages.sklearn_package())
    models += clone_models(models[0], other, 100, "churn")
    make_due(*models)
    with SandboxCounter(started) as counter:
        dispatch.tick()
        finished = wait_for_runs([m.id for m in models], timeout=240)

    assert_all_scored_once(models, finished)
    units = BatchPart.objects.all()
    assert units.count() == 5 and len({unit.worker for unit in units}) == 2, (
        "both workers took units"
    )
    scored = pool_lines([tmp_path / "first.log", tmp_path / "second.log"])
    assert len(scored) == 5 and all(most <= pool for most, pool in scored), scored
    assert 0 < counter.most <= 2
    # One report per owner, each run in exactly one.
    report_emails(mailbox, finished[0].date, 2)
    assert reported_runs() == Counter({run.id: 1 for run in finished})
    assert_settled()


def test_a_worker_killed_mid_fleet_loses_and_doubles_nothing(
    owner, validated, workers, gate, mailbox, settings
):
    settings.RUN_LEASE_SECONDS = 3  # tick (here, in the test) takes the runs back soon
    fleet_settings = {"SANDBOX_POOL": "2", "SHARD_MODELS": "20"}
    doomed = workers("doomed", **fleet_settings)
    gated = deploy(owner, gate.package(), "gated", validated)
    models = [gated, *fleet(owner, validated, 59, "spend")]
    make_due(*models)
    dispatch.tick()
    [pid] = gate.wait().values()  # the doomed worker is mid-unit

    workers("survivor", **fleet_settings)
    os.killpg(doomed.pid, signal.SIGKILL)  # the worker and its pool, mid-fleet
    doomed.wait()
    wait_gone(pid)
    gate.open()
    finished = tick_until([m.id for m in models], timeout=240)

    assert_all_scored_once(models, finished)
    assert any(run.attempts == 2 for run in finished), "the killed unit's runs were retried"
    # Each run reported once, in the batch that finished it (the killed one's too, closed
    # by tick); no failure email.
    wait_until(lambda: len(reported_runs()) == 60, "every run is reported")
    assert reported_runs() == Counter({run.id: 1 for run in finished})
    assert not ScoringRun.objects.filter(notifications__isnull=False).exists()
    assert_settled()


def test_models_sharing_a_sandbox_fail_alone_when_one_crashes_hangs_or_raises(
    owner, validated, workers, mailbox
):
    workers("one-sandbox", SANDBOX_POOL="1", SANDBOX_TIMEOUT_SECONDS="4")
    crashing = deploy(owner, packages.crashing_package(max_attempts=1), "crashing", validated)
    hanging = deploy(
        owner, {**packages.slow_package(60), "params": {"max_attempts": 1}}, "hanging", validated
    )
    broken = deploy(owner, packages.broken_package(max_attempts=1), "broken", validated)
    good = fleet(owner, validated, 5, "spend")
    make_due(crashing, hanging, broken, *good)
    dispatch.tick()
    finished = {
        r.deployment_id: r
        for r in wait_for_runs([crashing.id, hanging.id, broken.id, *(g.id for g in good)])
    }

    assert finished[crashing.id].error.startswith(
        "the sandbox was killed by signal SIGKILL while scoring"
    )
    assert finished[hanging.id].error.startswith("timed out after 4 s while scoring")
    assert finished[broken.id].error.startswith(
        "RuntimeError: the model is broken while predicting"
    )
    assert {finished[g.id].status for g in good} == {"succeeded"}
    partitions = committed_partitions(finished[good[0].id].date)
    assert not {crashing.id, hanging.id, broken.id} & set(partitions)
    assert all(partitions[g.id] == ENTITIES for g in good)


def test_an_error_the_engine_did_not_expect_fails_the_runs_with_it_and_a_retry(
    worker, owner, validated, feature_table, bucket, mailbox
):
    day = date.today() + timedelta(days=12)
    folder = feature_table / f"dt={day.isoformat()}"
    folder.mkdir()
    (folder / "part-0.parquet").write_bytes(b"PAR1 not a parquet file PAR1")  # a slice half-landed
    try:
        models = [
            deploy(owner, packages.function_package(), name, validated) for name in ("a", "b")
        ]
        for model in models:
            lifecycle.request_run(model, day)
        dispatch.send_batch(list(ScoringRun.objects.values_list("id", flat=True)))
        finished = wait_for_runs([m.id for m in models], ("retrying", "failed"))
    finally:
        shutil.rmtree(folder)

    for run in finished:
        assert run.status == "retrying" and run.next_attempt_at is not None
        assert run.error.startswith("the batch failed on the worker: "), run.error
        assert "Parquet" in run.error or "parquet" in run.error, run.error
    assert not ScoringRun.objects.filter(status="running").exists()


def heavy_package(megabytes: int) -> dict:
    """A model that carries `megabytes` of its own (incompressible) weights, as a large
    forest does: loaded, it holds that much memory."""
    weights = np.random.default_rng(0).random(megabytes * 2**20 // 8)

    def spend_score(frame):
        return 1 / (1 + np.exp(-(frame["monthly_spend"].to_numpy() - 60 - weights[0] * 0) / 20))

    return {"model": spend_score, "features": ["monthly_spend"]}


def test_large_models_of_one_owner_take_turns_within_their_sandboxs_memory(
    owner, validated, workers, mailbox
):
    # Six 40 MB models in one sandbox would hold 240 MB, over its 200 MB: with 50 MB of
    # packages loaded at once, each takes its turn, on each of the slice's three chunks.
    workers(
        "large",
        SANDBOX_POOL="1",
        SANDBOX_MEMORY_BYTES=str(200 * 2**20),
        SANDBOX_LOADED_BYTES=str(50 * 2**20),
        CHUNK_ROWS="200",
    )
    models = fleet(owner, validated, 6, "forest", heavy_package(40))
    make_due(*models)
    dispatch.tick()
    finished = wait_for_runs([m.id for m in models], timeout=180)

    assert_all_scored_once(models, finished)


def test_beats_tick_goes_before_a_fleets_queued_validations(owner, workers, tmp_path):
    # A thousand uploads queue their validations; beat's tick, sent after them, must not
    # wait behind them past its expiry (and every schedule with it).
    data = packages.dumps(packages.function_package())
    for index in range(8):  # the quota is 10
        deployments.deploy(owner, io.BytesIO(data), "spend.dill", len(data), name=f"bulk-{index}")
    current_app.send_task("scoring.tasks.tick", expires=55)  # as beat sends it
    workers("bulk")
    wait_until(lambda: not PackageVersion.objects.filter(state="pending").exists(), "validations")

    received = re.findall(r"Task (scoring\.tasks\.\w+)\[", (tmp_path / "bulk.log").read_text())
    assert received.index("scoring.tasks.tick") < 2, received
