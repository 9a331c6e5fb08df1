"""Running untrusted model packages in a child process.

A package is code: dill rebuilds functions from bytecode, so loading it runs
whatever its author put in. Only the process boundary protects us, so the child

- is forked from a warm zygote process (scoring.sandbox.zygote) that itself started from
  a bare environment (no S3, database or mail secrets), and runs in its own empty
  working directory and its own session (a timeout kills its whole group);
- sets its own limits before it reads the package: CPU time, open files, file
  size, no core dumps, processes; and confines itself (scoring.sandbox.confinement): a user
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

import json
import os
import select
import signal
import socket
import time
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa

from scoring.sandbox.environments import Environment
from scoring.sandbox.limits import (
    FILE_KEYS,
    REFERENCE_SCORES_FILE,
    Limits,
    SandboxError,
    SandboxTimeout,
)
from scoring.sandbox.spawn import Child, fork_sandbox

POLL_SECONDS = 0.05
MEMORY_CHECK_SECONDS = 0.2


class Sandbox:
    """One child process serving one package: load once, then score many inputs.

    A package that pins libraries gets a sandbox forked from its environment's zygote."""

    def __init__(self, workdir: Path, limits: Limits, environment: Environment | None = None):
        self.workdir = Path(workdir)
        self.limits = limits
        self.environment = environment
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
                self.workdir,
                self.limits.__dict__,
                reply_write,
                self.stderr.fileno(),
                self.environment,
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

    def requirements(self, package_path: Path) -> list[str]:
        """The libraries the package pins, read without running any of it (so before its
        own environment exists), checked: [] when it pins none."""
        return self.request({"cmd": "requirements", "path": str(package_path)}, "reading")[
            "requirements"
        ]

    def send_load(self, key: int, package_path: Path) -> None:
        """Ask for one more package to be loaded, under `key`: a sandbox may serve several
        packages (of one owner). The reply comes with `receive`."""
        self.send({"cmd": "load", "key": key, "path": str(package_path)}, "loading")

    def score(self, input_path: Path, output_path: Path) -> int:
        """Score an Arrow IPC file of features with the one package loaded; the scores are
        written to output_path."""
        self.send_score(input_path, output_path)
        progress = self.receive("scoring")
        if not progress["ok"]:
            self.receive("scoring")
            raise SandboxError(progress["error"])
        return self.receive("scoring")["rows"]

    def predict(self, rows: pa.Table, key: int = 0) -> list[float]:
        """The scores of these rows (their features, in any order), from the package loaded
        under `key`: online requests. The rows go as an Arrow stream in an anonymous memory
        file the sandbox maps; the scores come back in the reply (exact: JSON floats round-trip)."""
        stream = pa.BufferOutputStream()
        with pa.ipc.new_stream(stream, rows.schema) as writer:
            writer.write_table(rows)
        memory = os.memfd_create("rows", os.MFD_CLOEXEC)
        try:
            with open(memory, "wb", closefd=False) as file:
                file.write(stream.getvalue())
            self.send(
                {"cmd": "predict", "key": key, "input": "rows"}, "predicting", {"input": memory}
            )
        finally:
            os.close(memory)
        return self.receive("predicting")["scores"]

    def importance(self, input_path: Path | None) -> dict[str, Any] | None:
        """The one loaded package's importance of its features, by permutation on the rows
        of `input_path` (an Arrow IPC file) where the model has no measure of its own."""
        message = {"cmd": "importance"} | ({"input": str(input_path)} if input_path else {})
        return self.request(message, "measuring feature importance")["importance"]

    def request(self, message: dict[str, Any], stage: str) -> dict[str, Any]:
        self.send(message, stage)
        return self.receive(stage)

    def send(self, message: dict[str, Any], stage: str, open_files: dict[str, int] = {}) -> None:  # noqa: B006
        """Send a request without waiting: several sandboxes can work at once.

        The files it names go along open, in FILE_KEYS order: opened here by name, or given
        open in `open_files` (the caller closes those)."""
        assert self.process is not None
        fds, opened = [], []
        try:
            for key, flags in FILE_KEYS.items():
                if key in open_files:
                    fds.append(open_files[key])
                elif key in message:
                    opened.append(os.open(message[key], flags | os.O_CLOEXEC, 0o600))
                    fds.append(opened[-1])
            socket.send_fds(self.process.requests, [json.dumps(message).encode()], fds)
        except (BrokenPipeError, ConnectionResetError):
            raise SandboxError(self.died_message(stage)) from None
        except OSError as exc:
            raise SandboxError(f"{exc} while {stage}") from exc
        finally:
            for fd in opened:
                os.close(fd)

    def receive(self, stage: str) -> dict[str, Any]:
        self.greet()
        return self.receive_reply(stage)

    def receive_reply(self, stage: str) -> dict[str, Any]:
        reply = json.loads(self.wait_for_reply(stage))
        if not reply.get("ok"):
            raise SandboxError(reply["error"])
        return reply

    def send_score(
        self, input_path: Path, output_path: Path, keys: list[int] = (0,), release: bool = False
    ) -> None:
        """Ask the packages `keys` names to score a chunk, in turn, into one file. The sandbox
        tells each package's outcome as it goes ({"key", "progress": True, "ok"[, "error"]}),
        then replies {"rows", "scored": the keys whose scores are in the file, in order}.
        With `release`, it then lets those packages go (they are loaded again to score more)."""
        message = {
            "cmd": "score",
            "input": str(input_path),
            "output": str(output_path),
            "keys": list(keys),
            "release": release,
        }
        self.send(message, "scoring")

    def fileno(self) -> int:
        """The pipe the replies come on, for a selector watching many sandboxes."""
        return self.replies

    def take_lines(self) -> list[bytes]:
        """The whole reply lines read so far, after a selector said the pipe is readable.

        Raises SandboxError if the sandbox is gone."""
        data = os.read(self.replies, 1 << 16)
        if not data:
            self.process.wait(timeout=5)
            raise SandboxError(self.died_message("scoring"))
        *lines, self.pending = (self.pending + data).split(b"\n")
        return lines

    def watch(self, stage: str, deadline: float) -> None:
        """Raise SandboxError, the sandbox stopped, past the deadline or over its memory."""
        if time.monotonic() > deadline:
            self.kill()
            raise SandboxTimeout(
                f"timed out after {self.limits.timeout_seconds:g} s while {stage}; the sandbox was stopped"
            )
        rss = self.resident_bytes()
        if rss > self.limits.memory_bytes:
            self.kill()
            raise SandboxError(
                f"used {rss / 1024**2:.0f} MB of memory while {stage}, over the limit of "
                f"{self.limits.memory_bytes / 1024**2:.0f} MB; the sandbox was stopped"
            )

    def wait_for_reply(self, stage: str) -> bytes:
        """The next reply line. Replies are read with os.read into our own buffer: a
        buffered file could hold a second reply that poll() would never announce. poll,
        not select: select cannot watch a descriptor numbered above 1024."""
        deadline = time.monotonic() + self.limits.timeout_seconds
        next_memory_check = time.monotonic() + MEMORY_CHECK_SECONDS
        poller = select.poll()
        poller.register(self.replies, select.POLLIN)
        while True:
            line, newline, rest = self.pending.partition(b"\n")
            if newline:
                self.pending = rest
                return line
            if poller.poll(POLL_SECONDS * 1000):
                data = os.read(self.replies, 1 << 16)
                if not data:
                    self.process.wait(timeout=5)
                    raise SandboxError(self.died_message(stage))
                self.pending += data
                continue
            if time.monotonic() > deadline or time.monotonic() > next_memory_check:
                next_memory_check = time.monotonic() + MEMORY_CHECK_SECONDS
                self.watch(stage, deadline)

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
