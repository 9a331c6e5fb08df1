"""One package version served online: a warm sandbox and the thread that feeds it.

Requests for the version wait in a bounded queue; the runner's thread takes all that are
waiting (up to BATCH_ROWS) and scores them in one call to the sandbox, so a burst of
single rows costs about one model call, not one each. A call that raises is tried again
request by request, so one bad request fails alone.

Faults stay with the requests they hit:
- past ONLINE_TIMEOUT_SECONDS the sandbox is killed (SandboxTimeout): the requests it held
  get 504 and a fresh sandbox serves the next;
- a sandbox that dies (a crash, a signal) fails the requests it held with 503, and a fresh
  one serves the next;
- the queue's bounds (ONLINE_QUEUE_ROWS rows waiting, or a request waiting longer than
  ONLINE_MAX_WAIT_SECONDS) answer excess at once with 429, never a pile-up of latency.
The package is loaded at first use; a request waits for that up to ONLINE_LOAD_WAIT_SECONDS.
"""

import logging
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from scoring.sandbox.client import Sandbox
from scoring.sandbox.limits import SandboxError, SandboxTimeout

# Rows scored in one call at most when requests are merged (a larger request goes alone).
BATCH_ROWS = 1024
log = logging.getLogger(__name__)


class Refused(Exception):
    """The request was not scored; `status` says why (429, 503, 504, 422), `retry_after`
    when trying again later would help."""

    def __init__(self, message: str, status: int, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


@dataclass
class Job:
    rows: pa.Table
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.monotonic)


class Runner:
    """A warm sandbox serving one version, started by `start`, stopped by `close`."""

    def __init__(
        self,
        label: str,
        open_sandbox: Callable[[Path], Sandbox],
        max_queue_rows: int,
        max_wait_seconds: float,
    ):
        self.label = label
        self.open_sandbox = open_sandbox  # given its working folder, a loaded sandbox
        self.max_queue_rows = max_queue_rows
        self.max_wait_seconds = max_wait_seconds
        self.loaded: Future = Future()  # done once the first sandbox is ready (or failed)
        self.sandbox: Sandbox | None = None
        self.jobs: deque[Job] = deque()
        self.queued_rows = 0
        self.lock = threading.Condition()
        self.closing = False
        self.last_used = time.monotonic()
        self.memory_bytes = 0
        self.requests = 0
        self.thread = threading.Thread(target=self.run, name=f"online {label}", daemon=True)

    @property
    def state(self) -> str:
        if not self.loaded.done():
            return "loading"
        return "failed" if self.loaded.exception() else "ready"

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def start(self) -> "Runner":
        self.thread.start()
        return self

    def submit(self, rows: pa.Table) -> Future:
        """Queue rows to score; the future gives their scores or raises Refused."""
        self.last_used = time.monotonic()
        with self.lock:
            if self.closing:
                raise Refused("the model is being replaced; try again", 503, retry_after=1)
            if self.jobs and (
                self.queued_rows + rows.num_rows > self.max_queue_rows
                or self.last_used - self.jobs[0].queued_at > self.max_wait_seconds
            ):
                raise Refused(
                    f"{self.label} is busy: {self.queued_rows} rows are waiting", 429, retry_after=1
                )
            job = Job(rows)
            self.jobs.append(job)
            self.queued_rows += rows.num_rows
            self.requests += 1
            self.lock.notify()
        return job.future

    def run(self) -> None:
        folder = tempfile.TemporaryDirectory(prefix="dropscore-online-")
        try:
            self.sandbox = self.fresh_sandbox(Path(folder.name))
        except Exception as exc:  # S3 down, the package broken: its requests say so
            log.warning("%s could not be loaded: %s", self.label, exc)
            self.loaded.set_exception(Refused(f"{self.label} could not be loaded: {exc}", 503))
            self.fail_waiting(Refused(f"{self.label} could not be loaded: {exc}", 503, 5))
            folder.cleanup()
            return
        self.loaded.set_result(True)
        try:
            while True:
                batch = self.next_batch()
                if batch is None:
                    return
                self.score(batch, Path(folder.name))
        finally:
            if self.sandbox is not None:
                self.sandbox.close()
            folder.cleanup()

    def fresh_sandbox(self, workdir: Path) -> Sandbox:
        sandbox = self.open_sandbox(workdir)
        self.memory_bytes = sandbox.resident_bytes()
        return sandbox

    def next_batch(self) -> list[Job] | None:
        """The jobs waiting, merged up to BATCH_ROWS rows of one schema (at least one)."""
        with self.lock:
            while not self.jobs and not self.closing:
                self.lock.wait()
            if self.closing:
                return None
            batch = [self.jobs.popleft()]
            rows = batch[0].rows.num_rows
            while (
                self.jobs
                and rows + self.jobs[0].rows.num_rows <= BATCH_ROWS
                and self.jobs[0].rows.schema.equals(batch[0].rows.schema)
            ):
                batch.append(self.jobs.popleft())
                rows += batch[-1].rows.num_rows
            self.queued_rows -= rows
            return batch

    def score(self, batch: list[Job], workdir: Path) -> None:
        rows = pa.concat_tables([job.rows for job in batch]) if len(batch) > 1 else batch[0].rows
        if self.sandbox is None or self.sandbox.process.poll() is not None:
            self.replace_sandbox(workdir)  # it died while idle: no request of ours was in it
            if self.sandbox is None:
                for job in batch:
                    job.future.set_exception(Refused(f"{self.label} could not be loaded", 503, 5))
                return
        try:
            scores = self.sandbox.predict(rows)
        except SandboxError as exc:
            if self.sandbox.process.poll() is None:  # the model raised: it fails alone
                if len(batch) > 1:
                    for job in batch:
                        self.score([job], workdir)
                    return
                batch[0].future.set_exception(Refused(f"the model failed: {exc}", 422))
                return
            status = 504 if isinstance(exc, SandboxTimeout) else 503
            for job in batch:
                job.future.set_exception(Refused(f"{self.label}: {exc}", status, retry_after=1))
            self.replace_sandbox(workdir)
            return
        start = 0
        for job in batch:
            end = start + job.rows.num_rows
            job.future.set_result(scores[start:end])
            start = end

    def replace_sandbox(self, workdir: Path) -> None:
        if self.sandbox is not None:
            self.sandbox.close()
        self.sandbox = None
        try:
            self.sandbox = self.fresh_sandbox(workdir)
        except Exception as exc:
            log.warning("%s could not be loaded again: %s", self.label, exc)
            with self.lock:
                self.closing = True
            self.fail_waiting(Refused(f"{self.label} could not be loaded again: {exc}", 503, 5))

    def fail_waiting(self, error: Refused) -> None:
        with self.lock:
            jobs, self.jobs, self.queued_rows = list(self.jobs), deque(), 0
        for job in jobs:
            job.future.set_exception(error)

    @property
    def broken(self) -> bool:
        """It can serve no more: its load failed, or a fresh sandbox could not be had."""
        return self.state == "failed" or (self.closing and not self.thread.is_alive())

    def close(self) -> None:
        """Stop taking requests; those waiting fail with 503 (try again), the sandbox goes."""
        with self.lock:
            self.closing = True
            self.lock.notify_all()
        self.fail_waiting(Refused(f"{self.label} was let go; try again", 503, retry_after=1))

    def describe(self) -> dict:
        return {"state": self.state, "requests": self.requests, "memory_bytes": self.memory_bytes}
