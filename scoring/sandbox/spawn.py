"""The parent's side of the zygote: start it, and fork sandboxes from it.

A fresh interpreter that imports pandas, pyarrow and CatBoost costs about a second of
CPU; a batch of ten models paid it ten times before a single row was scored. So each
worker process starts one zygote (scoring.sandbox.zygote) that imports them once, and
every sandbox is forked from it. The parent hands each child its request socket and pipes
over a Unix socket (SCM_RIGHTS) and gets its pid back; the child belongs to the zygote,
which writes its exit status to a pipe the parent reads (`Child`).

A package that pins libraries runs in a zygote of its own, started from its environment's
interpreter (scoring.sandbox.environments) the same way, so it gets the same protections;
that zygote holds the environment in use while it lives.
"""

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from scoring.sandbox import scratch
from scoring.sandbox.confinement import bare_environment
from scoring.sandbox.environments import Environment


class Child:
    """A forked sandbox: the part of subprocess.Popen's interface that Sandbox uses, and
    the socket its requests go on."""

    def __init__(self, pid: int, requests: socket.socket, status_fd: int):
        self.pid = pid
        self.requests = requests
        self.status_fd = status_fd
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and readable(self.status_fd, 0):
            self._read_status()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not readable(self.status_fd, timeout):
                raise subprocess.TimeoutExpired("sandbox", timeout)
            self._read_status()
        return self.returncode

    def _read_status(self) -> None:
        status = os.read(self.status_fd, 32)
        os.close(self.status_fd)
        # No status: the zygote itself died, and killed its children as it went.
        self.returncode = int(status) if status else -signal.SIGKILL


def readable(fd: int, timeout: float | None) -> bool:
    """poll, not select: a worker serving many sandboxes holds descriptors above 1024,
    which select cannot watch."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(None if timeout is None else timeout * 1000))


class Zygote:
    """The parent's handle on its zygote process."""

    def __init__(self, environment: Environment | None = None):
        # Held before the interpreter starts from it: a clean-up never removes it under us.
        self.holding = environment.hold() if environment else None
        python = str(environment.python) if environment else sys.executable
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.home = str(scratch.make("zygote"))
        env = {**bare_environment(self.home), "DROPSCORE_CONTROL_FD": str(theirs.fileno())}
        self.process = subprocess.Popen(
            [python, "-I", "-c", "from scoring.sandbox.zygote import main; main()"],
            stdin=subprocess.DEVNULL,
            cwd=self.home,
            env=env,
            pass_fds=(theirs.fileno(),),
            start_new_session=True,
        )
        theirs.close()
        self.control = ours
        self.lock = threading.Lock()

    def alive(self) -> bool:
        return self.process.poll() is None

    def spawn(
        self, workdir: Path, limits: dict, requests_fd: int, reply_fd: int, stderr_fd: int
    ) -> tuple[int, int]:
        """Fork a sandbox serving requests from this socket and replying on these pipes: its
        pid and the pipe its exit status comes on.

        Raises OSError when the zygote is gone."""
        # The names (not the values) of this process's variables: the sandbox checks it
        # holds none of them.
        request = {"workdir": str(workdir), "limits": limits, "variables": sorted(os.environ)}
        request = json.dumps(request).encode()
        status_read, status_write = os.pipe()
        try:
            with self.lock:
                socket.send_fds(
                    self.control, [request], [requests_fd, reply_fd, stderr_fd, status_write]
                )
                reply = self.control.recv(4096)
        except OSError:
            os.close(status_read)
            raise
        finally:
            os.close(status_write)
        if not reply:
            os.close(status_read)
            raise ConnectionError("the sandbox zygote exited")
        return json.loads(reply)["pid"], status_read

    def close(self) -> None:
        self.control.close()  # the zygote kills its children and exits
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.holding is not None:
            os.close(self.holding)


# This process's zygotes: the default one (None) and one per environment used.
_zygotes: dict[Environment | None, Zygote] = {}
_zygotes_pid: int | None = None
_zygote_lock = threading.Lock()


def zygote(environment: Environment | None = None) -> Zygote:
    """This process's zygote for the environment, started at first use or again if it died."""
    global _zygotes_pid
    with _zygote_lock:
        # A forked process (a Celery pool process) must not share its parent's zygotes.
        if _zygotes_pid != os.getpid():
            _zygotes.clear()
            _zygotes_pid = os.getpid()
        found = _zygotes.get(environment)
        if found is None or not found.alive():
            if found is not None:
                found.close()
            found = _zygotes[environment] = Zygote(environment)
        return found


def fork_sandbox(
    workdir: Path,
    limits: dict,
    reply_fd: int,
    stderr_fd: int,
    environment: Environment | None = None,
) -> Child:
    """A new sandbox process, forked from the environment's zygote (the worker's own for
    None); requests go on the returned Child's socket, replies to reply_fd."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    if environment is not None:
        environment.touch()
    try:
        try:
            pid, status_fd = zygote(environment).spawn(
                workdir, limits, theirs.fileno(), reply_fd, stderr_fd
            )
        except OSError:  # the zygote died since we looked: one fresh start
            pid, status_fd = zygote(environment).spawn(
                workdir, limits, theirs.fileno(), reply_fd, stderr_fd
            )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return Child(pid, ours, status_fd)
