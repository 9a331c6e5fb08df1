"""Container health checks of the compose file: `python deploy/healthcheck.py <role>`.

Exit 0 when healthy, 1 with the reason on stderr otherwise (Docker keeps the output).

- web: the app answers a page over HTTP on this container's port (any 2xx or 3xx: a
  redirect to https is an answer), asked for with the first ALLOWED_HOSTS name;
- worker: this container's Celery worker answers a ping through the broker;
- beat: Celery beat wrote its schedule file recently (it syncs it every few minutes
  while it sends the tick);
- spark-master, spark-worker: the Spark daemon's web UI answers (8080, 8081).
"""

import glob
import http.client
import os
import socket
import sys
import time

WEB_PORT = int(os.environ.get("PORT", "8000"))
BEAT_SCHEDULE = os.environ.get("BEAT_SCHEDULE", "/tmp/celerybeat-schedule")
# Beat syncs its schedule after a task is sent, at most every 3 minutes; tick is every minute.
BEAT_STALE_SECONDS = 600


def web() -> str:
    hosts = [h for h in os.environ.get("ALLOWED_HOSTS", "localhost").split(",") if h.strip()]
    host = hosts[0].strip().lstrip(".") if hosts else "localhost"
    headers = {"Host": "localhost" if host == "*" else host}
    if os.environ.get("SECURE_PROXY_SSL_HEADER", "").lower() in ("1", "true", "yes", "on"):
        headers["X-Forwarded-Proto"] = "https"  # as the proxy in front would say
    connection = http.client.HTTPConnection("127.0.0.1", WEB_PORT, timeout=10)
    connection.request("GET", "/login/", headers=headers)
    status = connection.getresponse().status
    if not 200 <= status < 400:
        raise RuntimeError(f"GET /login/ as {headers['Host']} answered {status}")
    return f"GET /login/ answered {status}"


def worker() -> str:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    from portal.celery import app

    name = f"celery@{socket.gethostname()}"
    if not app.control.ping(destination=[name], timeout=5):
        raise RuntimeError(f"{name} did not answer a ping")
    return f"{name} answered"


def beat() -> str:
    files = glob.glob(BEAT_SCHEDULE + "*")
    if not files:
        raise RuntimeError(f"no schedule file at {BEAT_SCHEDULE}")
    age = time.time() - max(os.path.getmtime(path) for path in files)
    if age > BEAT_STALE_SECONDS:
        raise RuntimeError(f"the schedule was last written {age:.0f} s ago")
    return f"schedule written {age:.0f} s ago"


def spark_ui(port: int):
    def check() -> str:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/")
        status = connection.getresponse().status
        if status != 200:
            raise RuntimeError(f"the Spark web UI on {port} answered {status}")
        return f"the Spark web UI on {port} answered"

    return check


def main(role: str) -> int:
    checks = {
        "web": web,
        "worker": worker,
        "beat": beat,
        "spark-master": spark_ui(8080),
        "spark-worker": spark_ui(8081),
    }
    if role not in checks:
        print(f"usage: healthcheck.py {'|'.join(checks)}", file=sys.stderr)
        return 2
    try:
        print(checks[role]())
    except Exception as exc:  # any failure is an unhealthy answer, with its reason
        print(f"{role} unhealthy: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ""))
