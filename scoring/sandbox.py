"""Running untrusted model packages in a child process.

A package is code: dill rebuilds functions from bytecode, so loading it runs
whatever its author put in. Only the process boundary protects us, so the child

- is forked from a warm zygote process (scoring.zygote) that itself started from
  a bare environment (no S3, database or mail secrets), and runs in its own empty
  working directory and its own session (a timeout kills its whole group);
- sets its own limits before it reads the package: CPU time, open files, file
  size, no core dumps, and cuts its network with a new network namespace where
  the kernel lets it;
- is watched by the parent for the memory it holds of its own (RLIMIT_AS would
  break numpy and CatBoost, which reserve large virtual areas) and for wall-clock
  time.

The parent talks to the child with one JSON line per request and reply on a
pipe of its own; the model's own prints go to the child's stderr, which is
kept for error messages. Data travels as Arrow IPC files the child memory-maps.
"""

import json
import os
import select
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import psutil

from scoring.zygote import Child, fork_sandbox

CLONE_NEWNET = 0x40000000
# A package's reference_scores, written by the sandbox into its working folder at load.
REFERENCE_SCORES_FILE = "reference-scores.arrow"
POLL_SECONDS = 0.05
NICE = 10
MEMORY_CHECK_SECONDS = 0.2


class SandboxError(Exception):
    """The package failed in the sandbox; the message is for the package's owner."""


@dataclass(frozen=True)
class Limits:
    timeout_seconds: float = 120
    memory_bytes: int = 4 * 1024**3
    cpu_seconds: int = 600
    open_files: int = 256
    file_bytes: int = 1024**3


class Sandbox:
    """One child process serving one package: load once, then score many inputs."""

    def __init__(self, workdir: Path, limits: Limits):
        self.workdir = Path(workdir)
        self.limits = limits
        self.process: Child | None = None
        self.stderr_path = self.workdir / "sandbox-stderr.log"
        self.greeted = True
        self._protections: dict[str, str] = {}

    def __enter__(self) -> "Sandbox":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def start(self) -> None:
        reply_read, reply_write = os.pipe()
        try:
            with open(self.stderr_path, "wb") as stderr:
                self.process = fork_sandbox(
                    self.workdir, self.limits.__dict__, reply_write, stderr.fileno()
                )
        except OSError as exc:
            os.close(reply_read)
            raise SandboxError(f"the sandbox could not start: {exc}") from exc
        finally:
            os.close(reply_write)
        self.replies, self.pending = reply_read, b""
        # The hello is answered with the first reply: sandboxes start side by side.
        self.send({"cmd": "hello"}, "starting")
        self.greeted = False

    @property
    def protections(self) -> dict[str, str]:
        self.greet()
        return self._protections

    def greet(self) -> None:
        if not self.greeted:
            self.greeted = True
            self._protections = self.receive_reply("starting")["protections"]

    def load(self, package_path: Path) -> dict[str, Any]:
        """Load the package and check its contract; returns the package description."""
        return self.request({"cmd": "load", "path": str(package_path)}, "loading")["package"]

    def score(self, input_path: Path, output_path: Path) -> int:
        """Score an Arrow IPC file of features; the scores are written to output_path."""
        self.send_score(input_path, output_path)
        return self.receive("scoring")["rows"]

    def request(self, message: dict[str, Any], stage: str) -> dict[str, Any]:
        self.send(message, stage)
        return self.receive(stage)

    def send(self, message: dict[str, Any], stage: str) -> None:
        """Send a request without waiting: several sandboxes can work at once."""
        assert self.process is not None and self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(message).encode() + b"\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            raise SandboxError(self.died_message(stage)) from None

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
            text = self.stderr_path.read_bytes()[-limit:].decode("utf-8", "replace").strip()
        except OSError:
            return ""
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
        self.process.stdin.close()
        os.close(self.replies)


# --- the child --------------------------------------------------------------


def serve(requests: BinaryIO, replies: TextIO, limits: Limits) -> None:
    """The sandbox process (forked by scoring.zygote): set limits, then serve requests."""
    protections = apply_limits(limits)
    state: dict[str, Any] = {}
    for line in requests:
        request = json.loads(line)
        try:
            reply = handle(request, state)
            reply["ok"] = True
        except BaseException as exc:  # the package may raise anything, even SystemExit
            reply = {"ok": False, "error": describe_error(exc, request["cmd"])}
        if request["cmd"] == "hello":
            reply["protections"] = protections
        replies.write(json.dumps(reply, default=str) + "\n")


def apply_limits(limits: Limits) -> dict[str, str]:
    import ctypes
    import resource

    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 5))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # Below the worker that feeds it: the worker's share of the CPU (reading, handing
    # off, writing scores) is what keeps every sandbox busy.
    os.nice(NICE)
    protections = {
        "environment": "bare (no secrets)",
        "cpu": f"{limits.cpu_seconds} s",
        "memory": f"{limits.memory_bytes // 1024**2} MB resident (watched by the parent)",
        "wall clock": f"{limits.timeout_seconds:g} s per request",
        "priority": f"nice {os.nice(0)}",
    }
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) == 0:
        protections["network"] = "cut (own network namespace)"
    else:
        protections["network"] = f"not cut: {os.strerror(ctypes.get_errno())}"
    return protections


def handle(request: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    from scoring import contract

    command = request["cmd"]
    if command == "hello":
        return {}
    if command == "load":
        import dill

        with open(request["path"], "rb") as file:
            obj = dill.load(file)
        package = contract.parse_package(obj)
        state.update(model=obj["model"], package=package)
        if package.reference_scores_count:
            write_scores(obj["reference_scores"], REFERENCE_SCORES_FILE)
        return {"package": package.to_json()}
    if command == "score":
        return {"rows": score_file(state, request["input"], request["output"])}
    raise ValueError(f"unknown request {command!r}")


def score_file(state: dict[str, Any], input_path: str, output_path: str) -> int:
    import pyarrow as pa

    from scoring import contract

    package = state["package"]
    with pa.memory_map(input_path, "r") as source:
        table = pa.ipc.open_file(source).read_all()
    # Arrow dictionaries become pandas categories: CatBoost scores them ~2x faster than strings.
    # split_blocks: each column stays its own block, mostly straight from the mapped file,
    # instead of being copied into one 2-D block (10-15% of a CatBoost model's CPU per chunk).
    frame = table.select(package.features).to_pandas(split_blocks=True)
    scores = contract.score(
        state["model"], package.method, frame, package.params.get("positive_class")
    )
    contract.check_scores(scores, len(frame), package.method)
    write_scores(scores, output_path)
    return len(frame)


def write_scores(scores, path: str) -> None:
    import numpy as np
    import pyarrow as pa

    result = pa.table({"score": pa.array(np.asarray(scores, dtype=np.float64))})
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, result.schema) as writer:
        writer.write_table(result)


def describe_error(exc: BaseException, command: str) -> str:
    from scoring.contract import ContractError

    if isinstance(exc, ContractError):
        return str(exc)
    stage = {"load": "loading", "score": "predicting"}.get(command, command)
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return f"{text} while {stage}"
