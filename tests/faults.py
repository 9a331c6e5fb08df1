"""Faults the tests that drive whole runs through the real worker inject: a gate the models
wait at, a Redis, a SeaweedFS and a mail server of the test's own to break, a table held so
database sessions race, and processes stopped hard."""

import contextlib
import email
import os
import signal
import socket
import socketserver
import subprocess
import threading
import time
import uuid
from pathlib import Path

import boto3
import kombu.pools
import psutil
import redis
from django.db import connection, transaction

from deploy import services
from tests.factories import packages
from tests.flows import wait_until

# A model that stops at a gate once it holds a whole slice (validation's smoke test has
# 200 rows), until the test lets it through: the test injects its fault meanwhile, so it
# lands mid-batch for certain instead of by timing. A sandbox reaches no file outside its
# own folder, so the model marks its arrival there, and the gate opens with a signal.
GATED = """
import os
import signal
import time

def model(frame):
    if len(frame) > 250:
        let_through = []
        signal.signal(signal.SIGUSR1, lambda *_: let_through.append(True))
        with open("at-gate", "w") as mark:
            mark.write(str(os.getpid()))
        deadline = time.monotonic() + 100
        while not let_through and time.monotonic() < deadline:
            time.sleep(0.05)
        os.remove("at-gate")
    return frame["age"].to_numpy() / 100
"""


class Gate:
    """Gated models in the sandboxes of `workers` (Popen objects, added as they start).

    Closed, the test sees which runs wait at it; open, it lets every arrival through."""

    def __init__(self):
        self.workers: list = []
        self.opened, self.closed = threading.Event(), threading.Event()
        self.releaser = threading.Thread(target=self.release_arrivals, daemon=True)

    def package(self, **params) -> dict:
        return {
            "model": packages.notebook_function(GATED, "model"),
            "features": ["age"],
            "params": {"retry_delay_minutes": 0, **params},
        }

    def waiting(self) -> dict[int, int]:
        """{run id: sandbox pid} of the runs whose model waits at the gate: sandboxes are
        children of a worker's zygote, working in their run's folder."""
        found = {}
        for worker in self.workers:
            with contextlib.suppress(psutil.Error):
                for process in psutil.Process(worker.pid).children(recursive=True):
                    with contextlib.suppress(OSError):
                        folder = os.readlink(f"/proc/{process.pid}/cwd")
                        if os.path.exists(f"/proc/{process.pid}/cwd/at-gate"):
                            run_id = int(folder.split("dropscore-run-")[1].split("-")[0])
                            found[run_id] = process.pid
        return found

    def wait(self, count: int = 1, timeout: float = 120) -> dict[int, int]:
        """{run id: sandbox pid}, once `count` runs wait at the gate."""
        deadline = time.monotonic() + timeout
        while len(found := self.waiting()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)} runs reached the gate, not {count}")
            time.sleep(0.1)
        return found

    def open(self) -> None:
        if not self.opened.is_set():
            self.opened.set()
            self.releaser.start()

    def close(self) -> None:
        self.closed.set()

    def release_arrivals(self) -> None:
        while not self.closed.wait(0.1):
            for pid in self.waiting().values():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGUSR1)


def publish_to(app, url: str, queue: str) -> None:
    """Make this process's Celery app publish to another broker and queue.

    The app caches its connection and producer pools on first use, and kombu keeps the
    producer pools in a registry of its own keyed by broker: reset all of them, or tasks
    would still go to the old broker, or back at it to a pool closed here."""
    if app._pool is not None:
        app._pool.force_close_all()
    kombu.pools.reset()
    app._pool = None
    app.amqp._producer_pool = None
    app.conf.broker_url = url
    app.conf.task_default_queue = queue


class Broker:
    """A Redis of the test's own and a queue on it. Never the shared Redis: a restart
    empties a whole server, and kombu's redelivery sweep takes back every queue's
    unacknowledged messages, other sessions' too."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.service = services.start_redis(folder)
        self.url = self.service.url
        self.queue = f"faults-{uuid.uuid4().hex[:8]}"

    def queued(self) -> int:
        """Messages waiting in the queue (not those a worker has taken), at every priority:
        kombu keeps each of its steps but 0 in a list of its own, "<queue>\x06\x16<step>"."""
        client = redis.Redis.from_url(self.url)
        lists = [self.queue, *(f"{self.queue}\x06\x16{step}" for step in (3, 6, 9))]
        return sum(client.llen(name) for name in lists)

    def unacked_seconds(self) -> float:
        """How long the oldest message a worker took has gone unacknowledged."""
        oldest = redis.Redis.from_url(self.url).zrange("unacked_index", 0, 0, withscores=True)
        return time.time() - oldest[0][1] if oldest else 0.0

    def restart(self) -> None:
        """Kill Redis by its pid and start it again on the same port: empty, as it keeps
        nothing on disk."""
        self.service.process.kill()
        self.service.process.wait()
        port = int(self.url.rsplit(":", 1)[1].split("/")[0])
        self.service = services.start_redis(self.folder, port=port)

    def stop(self) -> None:
        self.service.stop()


@contextlib.contextmanager
def publishing_to(app, broker: Broker):
    """This process's tasks (tick's batches, validations) go to `broker` meanwhile."""
    saved = app.conf.broker_url, app.conf.task_default_queue
    publish_to(app, broker.url, broker.queue)
    try:
        yield
    finally:
        publish_to(app, *saved)


def stop_group(process, grace: float = 15) -> None:
    """SIGTERM a worker or beat, then SIGKILL its whole process group if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def wait_gone(pid: int, timeout: float = 30) -> None:
    def gone() -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_until(gone, f"process {pid} ends", timeout)


@contextlib.contextmanager
def released_together(model, sessions: int):
    """Hold the model's table until `sessions` other database sessions wait for it, then
    let them go at once, so their next steps race for real (PostgreSQL; SQLite runs one
    writer at a time anyway). Changes made inside are committed as they are let go."""
    if connection.vendor != "postgresql":
        yield
        return
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"LOCK TABLE {model._meta.db_table} IN ACCESS EXCLUSIVE MODE")
        yield

        def waiting() -> int:
            cursor.execute("SELECT pg_stat_clear_snapshot()")  # fresh figures each time
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'"
            )
            return cursor.fetchone()[0]

        wait_until(lambda: waiting() >= sessions, f"{sessions} sessions wait for the table")


class S3Server:
    """A SeaweedFS of the test's own, to stop and start again on the same port and data."""

    def __init__(self, folder: Path, access_key: str, secret_key: str):
        self.folder, self.keys = folder, (access_key, secret_key)
        self.service = services.start_seaweedfs(folder, *self.keys)
        self.url = self.service.url

    def stop(self) -> None:
        self.service.stop(grace=3)  # SIGTERM, then SIGKILL: SeaweedFS can take 10 s to exit

    def start(self) -> None:
        port = int(self.url.rsplit(":", 1)[1])
        self.service = services.start_seaweedfs(self.folder, *self.keys, s3_port=port)
        # Its S3 gateway answers a few seconds before its volume server is back.
        wait_until(self.reads_back, "SeaweedFS serves what it stored", timeout=60)

    def reads_back(self) -> bool:
        """True when an object of each bucket can be read (or there is none)."""
        s3 = boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.keys[0],
            aws_secret_access_key=self.keys[1],
            region_name="us-east-1",
        )
        try:
            for bucket in s3.list_buckets()["Buckets"]:
                listing = s3.list_objects_v2(Bucket=bucket["Name"], MaxKeys=1)
                for item in listing.get("Contents", []):
                    s3.get_object(Bucket=bucket["Name"], Key=item["Key"])["Body"].read()
        except Exception:
            return False
        return True


class MailServer:
    """A tiny SMTP server of the test's own, on loopback, that hangs: it accepts connections
    and says nothing, not even its greeting, until `answer()`. Then it takes every message,
    on the connections kept waiting too, and keeps them in `received`."""

    def __init__(self):
        self.answering, self.stopped = threading.Event(), threading.Event()
        self.connections: list[float] = []  # when each was accepted
        self.received: list[email.message.Message] = []
        mail_server = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                mail_server.connections.append(time.monotonic())
                while not mail_server.answering.wait(0.1):
                    if mail_server.stopped.is_set():
                        return
                mail_server.converse(self.rfile, self.wfile)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self) -> None:
        self.answering.set()

    def converse(self, rfile, wfile) -> None:
        """Enough SMTP for Django's backend: greeting, EHLO, MAIL, RCPT, DATA, QUIT."""

        def reply(line: str) -> None:
            wfile.write(line.encode() + b"\r\n")
            wfile.flush()

        reply("220 mail.test ESMTP")
        while command := rfile.readline():
            verb = command[:4].upper()
            if verb == b"DATA":
                reply("354 end with a dot")
                self.received.append(email.message_from_bytes(self.read_data(rfile)))
                reply("250 queued")
            elif verb == b"QUIT":
                reply("221 bye")
                return
            else:  # EHLO, MAIL FROM, RCPT TO, RSET, NOOP
                reply("250 mail.test")

    @staticmethod
    def read_data(rfile) -> bytes:
        lines = []
        while (line := rfile.readline()) not in (b".\r\n", b""):
            lines.append(line[1:] if line.startswith(b"..") else line)
        return b"".join(lines)

    def stop(self) -> None:
        self.stopped.set()
        self.server.shutdown()
        self.server.server_close()


def closed_port() -> int:
    """A loopback port nothing listens on: a server that is down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
