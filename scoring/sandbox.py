"""Running untrusted model packages in a child process.

A package is code: dill rebuilds functions from bytecode, so loading it runs
whatever its author put in. Only the process boundary protects us, so the child

- is forked from a warm zygote process (scoring.zygote) that itself started from
  a bare environment (no S3, database or mail secrets), and runs in its own empty
  working directory and its own session (a timeout kills its whole group);
- sets its own limits before it reads the package: CPU time, open files, file
  size, no core dumps, processes; and confines itself (scoring.confinement): a user
  of its own, files out of reach but for its folder and its libraries, no network;
- is watched by the parent for the memory it holds of its own (RLIMIT_AS would
  break numpy and CatBoost, which reserve large virtual areas) and for wall-clock
  time.

The parent sends each request as one JSON message on a Unix socket, with the files
it names already open (the package, a chunk to score, the file for its scores): the
sandbox reaches no path outside its folder, so the parent hands it what it needs.
Replies come back as JSON lines on a pipe; the model's own prints go to the child's
stderr, which is kept for error messages. Data travels as Arrow IPC files the child
memory-maps.
"""

import errno
import json
import os
import select
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import psutil

from scoring import confinement
from scoring.zygote import Child, fork_sandbox

# A package's reference_scores, which the sandbox writes at load into this file of its
# working folder, opened for it by the parent (Sandbox.load).
REFERENCE_SCORES_FILE = "reference-scores.arrow"
POLL_SECONDS = 0.05
NICE = 10
MEMORY_CHECK_SECONDS = 0.2
# The request keys that name files, and how the parent opens them for the sandbox.
FILE_KEYS = {
    "path": os.O_RDONLY,
    "input": os.O_RDONLY,
    "output": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "reference": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
}
MAX_REQUEST_BYTES = 1 << 16


class SandboxError(Exception):
    """The package failed in the sandbox; the message is for the package's owner."""


@dataclass(frozen=True)
class Limits:
    timeout_seconds: float = 120
    memory_bytes: int = 4 * 1024**3
    cpu_seconds: int = 600
    open_files: int = 256
    file_bytes: int = 1024**3
    # Processes and threads together: numpy, Arrow and CatBoost each start one thread a core.
    processes: int = field(default_factory=lambda: 64 + 4 * (os.cpu_count() or 1))


class Sandbox:
    """One child process serving one package: load once, then score many inputs."""

    def __init__(self, workdir: Path, limits: Limits):
        self.workdir = Path(workdir)
        self.limits = limits
        self.process: Child | None = None
        self.stderr_path = self.workdir / "sandbox-stderr.log"
        self.stderr: Any = None
        self.greeted = True
        self._protections: dict[str, dict] = {}

    def __enter__(self) -> "Sandbox":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def start(self) -> None:
        reply_read, reply_write = os.pipe()
        # Read back through this handle, never by name: whatever a package could reach, a
        # name might by then lead to another file.
        self.stderr = open(self.stderr_path, "w+b")
        try:
            self.process = fork_sandbox(
                self.workdir, self.limits.__dict__, reply_write, self.stderr.fileno()
            )
        except OSError as exc:
            os.close(reply_read)
            self.stderr.close()
            raise SandboxError(f"the sandbox could not start: {exc}") from exc
        finally:
            os.close(reply_write)
        self.replies, self.pending = reply_read, b""
        # The hello is answered with the first reply: sandboxes start side by side.
        self.send({"cmd": "hello"}, "starting")
        self.greeted = False

    @property
    def protections(self) -> dict[str, dict]:
        """{name: {"active": bool, "detail": str}}, as the sandbox found them."""
        self.greet()
        return self._protections

    def greet(self) -> None:
        if not self.greeted:
            self.greeted = True
            self._protections = self.receive_reply("starting")["protections"]

    def load(self, package_path: Path) -> dict[str, Any]:
        """Load the package and check its contract; returns the package description.

        Its reference_scores, if any, land in REFERENCE_SCORES_FILE in the working folder."""
        reference = str(self.workdir / REFERENCE_SCORES_FILE)
        message = {"cmd": "load", "path": str(package_path), "reference": reference}
        return self.request(message, "loading")["package"]

    def score(self, input_path: Path, output_path: Path) -> int:
        """Score an Arrow IPC file of features; the scores are written to output_path."""
        self.send_score(input_path, output_path)
        return self.receive("scoring")["rows"]

    def request(self, message: dict[str, Any], stage: str) -> dict[str, Any]:
        self.send(message, stage)
        return self.receive(stage)

    def send(self, message: dict[str, Any], stage: str) -> None:
        """Send a request without waiting: several sandboxes can work at once.

        The files it names go along open, in FILE_KEYS order."""
        assert self.process is not None
        fds = []
        try:
            for key, flags in FILE_KEYS.items():
                if key in message:
                    fds.append(os.open(message[key], flags | os.O_CLOEXEC, 0o600))
            socket.send_fds(self.process.requests, [json.dumps(message).encode()], fds)
        except (BrokenPipeError, ConnectionResetError):
            raise SandboxError(self.died_message(stage)) from None
        except OSError as exc:
            raise SandboxError(f"{exc} while {stage}") from exc
        finally:
            for fd in fds:
                os.close(fd)

    def receive(self, stage: str) -> dict[str, Any]:
        self.greet()
        return self.receive_reply(stage)

    def receive_reply(self, stage: str) -> dict[str, Any]:
        reply = json.loads(self.wait_for_reply(stage))
        if not reply.get("ok"):
            raise SandboxError(reply["error"])
        return reply

    def send_score(self, input_path: Path, output_path: Path) -> None:
        self.send({"cmd": "score", "input": str(input_path), "output": str(output_path)}, "scoring")

    def wait_for_reply(self, stage: str) -> bytes:
        """The next reply line. Replies are read with os.read into our own buffer: a
        buffered file could hold a second reply that select() would never announce."""
        deadline = time.monotonic() + self.limits.timeout_seconds
        next_memory_check = 0.0
        while True:
            line, newline, rest = self.pending.partition(b"\n")
            if newline:
                self.pending = rest
                return line
            ready, _, _ = select.select([self.replies], [], [], POLL_SECONDS)
            if ready:
                data = os.read(self.replies, 1 << 16)
                if not data:
                    self.process.wait(timeout=5)
                    raise SandboxError(self.died_message(stage))
                self.pending += data
                continue
            if time.monotonic() > deadline:
                self.kill()
                raise SandboxError(
                    f"timed out after {self.limits.timeout_seconds:g} s while {stage}; the sandbox was stopped"
                )
            if time.monotonic() < next_memory_check:
                continue
            next_memory_check = time.monotonic() + MEMORY_CHECK_SECONDS
            rss = self.resident_bytes()
            if rss > self.limits.memory_bytes:
                self.kill()
                raise SandboxError(
                    f"used {rss / 1024**2:.0f} MB of memory while {stage}, over the limit of "
                    f"{self.limits.memory_bytes / 1024**2:.0f} MB; the sandbox was stopped"
                )

    def resident_bytes(self) -> int:
        """Memory the package holds: unique pages, not those it shares with the zygote."""
        try:
            parent = psutil.Process(self.process.pid)
            family = [parent, *parent.children(recursive=True)]
            return sum(p.memory_full_info().uss for p in family)
        except psutil.NoSuchProcess:
            return 0

    def died_message(self, stage: str) -> str:
        code = self.process.poll()
        tail = self.stderr_tail()
        if code is not None and code < 0:
            reason = f"was killed by signal {signal.Signals(-code).name}"
            if -code == signal.SIGXCPU:
                reason += f" (CPU time limit of {self.limits.cpu_seconds} s)"
        else:
            reason = f"exited with code {code}"
        return f"the sandbox {reason} while {stage}" + (f": {tail}" if tail else "")

    def stderr_tail(self, limit: int = 800) -> str:
        try:
            size = os.fstat(self.stderr.fileno()).st_size
            text = os.pread(self.stderr.fileno(), limit, max(0, size - limit))
        except (OSError, AttributeError):
            return ""
        text = text.decode("utf-8", "replace").strip()
        return text.splitlines()[-1] if text else ""

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()

    def close(self) -> None:
        """The child keeps nothing worth a graceful exit: it is killed at once."""
        if self.process is None:
            return
        self.kill()
        self.process.requests.close()
        os.close(self.replies)
        self.stderr.close()


# --- the child --------------------------------------------------------------


def serve(
    requests: socket.socket,
    replies: TextIO,
    limits: Limits,
    workdir: Path,
    parent_variables: list[str],
) -> None:
    """The sandbox process (forked by scoring.zygote): confine itself, then serve requests."""
    protections = apply_limits(limits, workdir, parent_variables)
    state: dict[str, Any] = {}
    while True:
        message, fds, _, _ = socket.recv_fds(requests, MAX_REQUEST_BYTES, len(FILE_KEYS))
        if not message:  # the parent closed its end
            return
        request = json.loads(message)
        files = dict(zip([key for key in FILE_KEYS if key in request], fds, strict=True))
        try:
            reply = handle(request, files, state)
            reply["ok"] = True
        except BaseException as exc:  # the package may raise anything, even SystemExit
            reply = {"ok": False, "error": describe_error(exc, request["cmd"], limits)}
        finally:
            for fd in files.values():  # those the request did not take
                os.close(fd)
        if request["cmd"] == "hello":
            reply["protections"] = protections
        replies.write(json.dumps(reply, default=str) + "\n")


def apply_limits(limits: Limits, workdir: Path, parent_variables: list[str]) -> dict[str, dict]:
    import resource

    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 5))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # Below the worker that feeds it: the worker's share of the CPU (reading, handing
    # off, writing scores) is what keeps every sandbox busy.
    os.nice(NICE)
    protections = confinement.confine(workdir, limits.processes, parent_variables)
    memory = f"{limits.memory_bytes // 1024**2} MB of memory of its own, watched by the worker"
    protections["memory"] = confinement.entry(True, memory)
    time_limits = f"{limits.timeout_seconds:g} s per request, {limits.cpu_seconds} s of CPU"
    protections["time"] = confinement.entry(True, time_limits)
    return protections


def probe() -> None:
    """Confine this process as a sandbox confines itself, and print what it found.

    Run as `python -I -c "from scoring.sandbox import probe; probe()"` in a bare
    environment and an empty folder, with {"limits": ..., "variables": the names of the
    caller's variables} on stdin (scoring.protections does, for the status page)."""
    import sys

    given = json.loads(sys.stdin.read())
    print(json.dumps(apply_limits(Limits(**given["limits"]), Path.cwd(), given["variables"])))


def handle(request: dict[str, Any], files: dict[str, int], state: dict[str, Any]) -> dict:
    from scoring import contract

    command = request["cmd"]
    if command == "hello":
        return {}
    if command == "load":
        import dill

        with os.fdopen(files.pop("path"), "rb") as file:
            obj = dill.load(file)
        package = contract.parse_package(obj)
        state.update(model=obj["model"], package=package)
        if package.reference_scores_count and "reference" in files:
            with os.fdopen(files.pop("reference"), "wb") as sink:
                write_scores(obj["reference_scores"], sink)
        return {"package": package.to_json()}
    if command == "score":
        return {"rows": score_file(state, files.pop("input"), files.pop("output"))}
    raise ValueError(f"unknown request {command!r}")


def score_file(state: dict[str, Any], input_fd: int, output_fd: int) -> int:
    import mmap

    import pyarrow as pa

    from scoring import contract

    package = state["package"]
    with os.fdopen(output_fd, "wb") as sink:
        # Mapped, not read: the columns stay in the page cache the worker wrote them to.
        # The mapping lives as long as the frame's buffers do.
        try:
            mapped = mmap.mmap(input_fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(input_fd)
        table = pa.ipc.open_file(pa.py_buffer(mapped)).read_all()
        # Arrow dictionaries become pandas categories: CatBoost scores them ~2x faster than
        # strings. split_blocks: each column stays its own block, mostly straight from the
        # mapped file, instead of being copied into one 2-D block (10-15% of a CatBoost
        # model's CPU per chunk).
        frame = table.select(package.features).to_pandas(split_blocks=True)
        scores = contract.score(
            state["model"], package.method, frame, package.params.get("positive_class")
        )
        contract.check_scores(scores, len(frame), package.method)
        write_scores(scores, sink)
    return len(frame)


def write_scores(scores, sink: BinaryIO) -> None:
    import numpy as np
    import pyarrow as pa

    result = pa.table({"score": pa.array(np.asarray(scores, dtype=np.float64))})
    with pa.ipc.new_file(sink, result.schema) as writer:
        writer.write_table(result)


def describe_error(exc: BaseException, command: str, limits: Limits) -> str:
    from scoring.contract import ContractError

    if isinstance(exc, ContractError):
        return str(exc)
    stage = {"load": "loading", "score": "predicting"}.get(command, command)
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    # A fork or a thread refused for want of resources: the process limit's doing.
    if (isinstance(exc, OSError) and exc.errno == errno.EAGAIN) or "new thread" in str(exc):
        return (
            f"{text} while {stage}: the package reached the sandbox's limit of "
            f"{limits.processes} processes and threads"
        )
    return f"{text} while {stage}"
