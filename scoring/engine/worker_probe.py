"""The sandbox protections of a worker's host, for the status page.

A worker answers the `sandbox_protections` remote-control command (Celery's inspect,
as `ping` is) with what one probe found: a process started the way the zygote starts
(a bare environment, an empty folder) that confines itself exactly as every sandbox
does (scoring.sandbox.child.apply_limits) and reports. It runs once per worker, in the
background when the worker is ready, so the page never waits for it.

The worker imports this module through the CELERY_IMPORTS setting.
"""

import json
import os
import subprocess
import sys
import tempfile
import threading
from datetime import UTC, datetime

import redis
from celery.signals import worker_ready
from celery.worker.control import inspect_command
from django.conf import settings

from scoring import redis_keys
from scoring.engine.limits import sandbox_limits
from scoring.sandbox.confinement import bare_environment
from scoring.sandbox.limits import Limits

PROBE_SECONDS = 60
# With ENGINE=spark, what the sandboxes on each executor host found, as the last batch's
# tasks told it (scoring.engine.spark.job), kept in Redis (redis_keys.spark_executors).
EXECUTORS_KEPT_SECONDS = 7 * 24 * 3600

_report: dict | None = None
_lock = threading.Lock()


def probe(limits: Limits) -> dict:
    """What a sandbox on this host gets: {name: {"active": bool, "detail": str}}."""
    given = {"limits": limits.__dict__, "variables": sorted(os.environ)}
    with tempfile.TemporaryDirectory(prefix="dropscore-probe-") as workdir:
        done = subprocess.run(
            [sys.executable, "-I", "-c", "from scoring.sandbox.child import probe; probe()"],
            input=json.dumps(given),
            capture_output=True,
            text=True,
            cwd=workdir,
            env=bare_environment(workdir),
            timeout=PROBE_SECONDS,
        )
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
        raise RuntimeError(f"the probe sandbox failed: {tail[0]}")
    return json.loads(done.stdout)


def host_report() -> dict:
    """This worker's report, probed at the first call and kept."""
    global _report
    with _lock:
        if _report is None:
            try:
                _report = {"protections": probe(sandbox_limits()), "error": ""}
            except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as exc:
                _report = {"protections": {}, "error": str(exc)}
            _report["probed_at"] = datetime.now(UTC).isoformat()
        return _report


def keep_executor_report(host: str, protections: dict) -> None:
    report = {"protections": protections, "error": "", "probed_at": datetime.now(UTC).isoformat()}
    client = redis.Redis.from_url(settings.REDIS_URL)
    key = redis_keys.spark_executors()
    client.hset(key, host, json.dumps(report))
    client.expire(key, EXECUTORS_KEPT_SECONDS)  # gone once Spark scores no more


def executor_reports() -> dict[str, dict]:
    """{host: report} of the Spark executors' sandboxes, as their last batch found them."""
    found = redis.Redis.from_url(settings.REDIS_URL).hgetall(redis_keys.spark_executors())
    return {host.decode(): json.loads(report) for host, report in found.items()}


@worker_ready.connect
def probe_when_ready(**_) -> None:
    threading.Thread(target=host_report, name="sandbox-probe", daemon=True).start()


@inspect_command()
def sandbox_protections(state) -> dict:
    return host_report()
