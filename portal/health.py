"""Health checks of the parts Dropscore depends on, for the status API and page."""

import time

import redis
from django.conf import settings
from django.db import connection

from scoring import storage
from scoring.tasks import LAST_TICK_KEY


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


def broker() -> str:
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    client.ping()
    last = client.get(LAST_TICK_KEY)
    return f"last tick {last.decode()}" if last else "no tick yet"


def s3() -> str:
    storage.client().head_bucket(Bucket=settings.MODELS_BUCKET)
    return settings.S3_ENDPOINT_URL


def workers() -> str:
    from portal.celery import app

    replies = app.control.inspect(timeout=1.0).ping() or {}
    if not replies:
        raise RuntimeError("no worker answered")
    return f"{len(replies)} live: {', '.join(sorted(replies))}"


def check_all() -> dict:
    checks = {"database": database, "broker": broker, "storage": s3, "workers": workers}
    report = {name: timed(check) for name, check in checks.items()}
    return {"ok": all(r["ok"] for r in report.values()), **report}
