"""Health checks of the parts Dropscore depends on, for the status API and page."""

import json
import time
from datetime import datetime

import redis
from django.conf import settings
from django.db import connection

from scoring import redis_keys
from scoring.engine import worker_roll
from scoring.packages import storage


def timed(check) -> dict:
    started = time.monotonic()
    try:
        detail = check()
        result = {"ok": True, "detail": detail}
    except Exception as exc:  # a health check reports any failure, it never raises
        result = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
    result["ms"] = round(1000 * (time.monotonic() - started))
    return result


def database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return connection.vendor


def redis_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)


def last_tick(client: redis.Redis | None = None) -> datetime | None:
    """When beat's tick last ran (it writes the time to Redis), or None if never."""
    last = (client or redis_client()).get(redis_keys.last_tick())
    return datetime.fromisoformat(last.decode()) if last else None


def online_processes(client: redis.Redis | None = None) -> dict[str, dict]:
    """What each live serving process wrote of itself (scoring.online), by its name
    (host:pid); a key that expires between the scan and the read is left out."""
    client = client or redis_client()
    keys = sorted(client.scan_iter(match=redis_keys.online_processes(), count=100))
    found = {}
    prefix = redis_keys.online_process("")
    for name, value in zip(keys, client.mget(keys) if keys else [], strict=True):
        if value is not None:
            found[name.decode().removeprefix(prefix)] = json.loads(value)
    return found


def broker() -> str:
    client = redis_client()
    client.ping()
    tick = last_tick(client)
    return f"last tick {tick.isoformat()}" if tick else "no tick yet"


def s3() -> str:
    storage.client().head_bucket(Bucket=settings.MODELS_BUCKET)
    return settings.S3_ENDPOINT_URL


def workers() -> str:
    from portal.celery import app

    replies = worker_roll.ask(
        lambda limit: app.control.inspect(timeout=1.0, limit=limit).ping() or {}
    )
    if not replies:
        raise RuntimeError("no worker answered")
    return f"{len(replies)} live: {', '.join(sorted(replies))}"


def sandbox_protections() -> dict[str, dict]:
    """What each live worker's sandboxes get, as its probe found: {worker: report}, each
    report {"protections": {name: {"active", "detail"}}, "error", "probed_at"}.

    Asked of the workers, not found here: the web server may run on another host, or
    with other rights, than the workers that run the packages (scoring.engine.worker_probe)."""
    from portal.celery import app
    from scoring.engine import worker_probe

    reports = worker_roll.ask(lambda limit: broadcast(app, "sandbox_protections", limit))
    # With ENGINE=spark the packages run on the executors: their hosts' reports too.
    for host, report in worker_probe.executor_reports().items():
        reports[f"Spark executors on {host}"] = report
    return reports


def sandbox_environments() -> dict[str, dict]:
    """Each live worker's environments of pinned libraries: {worker: {"environments": [...],
    "error"}} (scoring.engine.environments). They live on each worker's disk."""
    from portal.celery import app

    return worker_roll.ask(lambda limit: broadcast(app, "sandbox_environments", limit))


def broadcast(app, command: str, limit: int | None) -> dict:
    """{worker: answer} of a remote-control command, once `limit` workers have answered."""
    replies = app.control.broadcast(command, reply=True, timeout=1.0, limit=limit) or []
    return {worker: answer for reply in replies for worker, answer in reply.items()}


def check_all() -> dict:
    checks = {"database": database, "broker": broker, "storage": s3, "workers": workers}
    report = {name: timed(check) for name, check in checks.items()}
    return {"ok": all(r["ok"] for r in report.values()), **report}
