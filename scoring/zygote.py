"""A warm process that forks sandboxes, so a package's libraries are imported once per worker.

A fresh interpreter that imports pandas, pyarrow and CatBoost costs about a second of
CPU; a batch of ten models paid it ten times before a single row was scored. The
zygote is started the way a sandbox is — isolated interpreter, bare environment, its
own session and empty folder — and holds nothing but imported libraries, so what it
forks knows no more than a fresh sandbox would. Each child first drops what the
zygote held (its control socket, the other children's pipes), then serves one package
(`scoring.sandbox.serve`), which sets its limits before it reads a byte of it.

The parent hands each child its request socket and pipes over a Unix socket
(SCM_RIGHTS) and gets its pid back. The child belongs to the zygote, so only the zygote
can wait for it: it writes each child's exit status to a pipe the parent reads, and as
root it then kills whatever still runs as the child's user (a process that left its
group). When the parent goes away (the socket closes), the zygote kills its children
and exits.
"""

import ctypes
import importlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from scoring.confinement import BASE_UID, bare_environment

# What most packages need; imported once in the zygote, shared by every child.
PRELOAD = ("numpy", "pandas", "pyarrow", "pyarrow.ipc", "dill", "sklearn", "catboost")
REPLY_FD = 3  # a child's reply pipe, right after stdin, stdout and stderr
PR_SET_PDEATHSIG = 1


class Child:
    """A forked sandbox: the part of subprocess.Popen's interface that Sandbox uses, and
    the socket its requests go on."""

    def __init__(self, pid: int, requests: socket.socket, status_fd: int):
        self.pid = pid
        self.requests = requests
        self.status_fd = status_fd
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self.status_fd], [], [], 0)[0]:
            self._read_status()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not select.select([self.status_fd], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired("sandbox", timeout)
            self._read_status()
        return self.returncode

    def _read_status(self) -> None:
        status = os.read(self.status_fd, 32)
        os.close(self.status_fd)
        # No status: the zygote itself died, and killed its children as it went.
        self.returncode = int(status) if status else -signal.SIGKILL


class Zygote:
    """The parent's handle on its zygote process."""

    def __init__(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.home = tempfile.mkdtemp(prefix="dropscore-zygote-")
        env = {**bare_environment(self.home), "DROPSCORE_CONTROL_FD": str(theirs.fileno())}
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-c", "from scoring.zygote import main; main()"],
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


_zygote: Zygote | None = None
_zygote_pid: int | None = None
_zygote_lock = threading.Lock()


def zygote() -> Zygote:
    """This process's zygote, started at first use or again if it died."""
    global _zygote, _zygote_pid
    with _zygote_lock:
        # A forked process (a Celery pool process) must not share its parent's zygote.
        if _zygote is None or _zygote_pid != os.getpid() or not _zygote.alive():
            _zygote, _zygote_pid = Zygote(), os.getpid()
        return _zygote


def fork_sandbox(workdir: Path, limits: dict, reply_fd: int, stderr_fd: int) -> Child:
    """A new sandbox process; requests go on the returned Child's socket, replies to reply_fd."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        try:
            pid, status_fd = zygote().spawn(workdir, limits, theirs.fileno(), reply_fd, stderr_fd)
        except OSError:  # the zygote died since we looked: one fresh start
            pid, status_fd = zygote().spawn(workdir, limits, theirs.fileno(), reply_fd, stderr_fd)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return Child(pid, ours, status_fd)


# --- the zygote process --------------------------------------------------------


def main() -> None:
    control = socket.socket(fileno=int(os.environ.pop("DROPSCORE_CONTROL_FD")))
    bare = set(os.environ)
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
    import scoring.sandbox  # noqa: F401  (and through it scoring.contract)

    # Some libraries set variables as they load (Arrow's allocator, OpenMP): the worker
    # has them too, from its own imports, but these are the zygote's own.
    library_variables = set(os.environ) - bare

    # SIGCHLD wakes the loop at once, so a killed sandbox's status reaches the parent
    # without polling.
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    statuses: dict[int, int] = {}  # child pid -> the pipe its exit status goes to
    while True:
        try:
            ready, _, _ = select.select([control, wake_read], [], [])
        except InterruptedError:
            continue
        if wake_read in ready:
            os.read(wake_read, 4096)
        reap(statuses)
        if control not in ready:
            continue
        message, fds, _, _ = socket.recv_fds(control, 4096, 4)
        if not message:  # the parent is gone: its sandboxes go with it
            for pid in statuses:
                kill_group(pid)
                sweep(pid)
            return
        requests_fd, reply_fd, stderr_fd, status_fd = fds
        sys.stdout.flush()
        sys.stderr.flush()
        zygote_pid = os.getpid()
        pid = os.fork()
        if pid == 0:
            request = json.loads(message)
            request["variables"] = sorted(set(request["variables"]) - library_variables)
            become_sandbox(request, requests_fd, reply_fd, stderr_fd, zygote_pid)
        for fd in (requests_fd, reply_fd, stderr_fd):
            os.close(fd)
        statuses[pid] = status_fd
        control.send(json.dumps({"pid": pid}).encode())


def reap(statuses: dict[int, int]) -> None:
    while statuses:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        status_fd = statuses.pop(pid, None)
        if status_fd is not None:
            sweep(pid)
            os.write(status_fd, str(os.waitstatus_to_exitcode(status)).encode())
            os.close(status_fd)


def sweep(pid: int) -> None:
    """Kill what still runs as a finished sandbox's user: processes that left its group
    (setsid) escape the parent's kill. Only a process of that user may kill them all at
    once (kill(-1) as root would kill everything), so a short-lived one does, and is
    waited for before the next sandbox could be given a reused pid's user."""
    if os.geteuid() != 0:
        return  # sandboxes share the worker's user: nothing is theirs alone
    killer = os.fork()
    if killer == 0:
        try:
            os.setresuid(BASE_UID + pid, BASE_UID + pid, BASE_UID + pid)
            os.kill(-1, signal.SIGKILL)
        except OSError:
            pass  # nothing runs as that user
        finally:
            os._exit(0)
    os.waitpid(killer, 0)


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def become_sandbox(
    request: dict, requests_fd: int, reply_fd: int, stderr_fd: int, zygote_pid: int
) -> None:
    """In the forked child: keep only its own pipes, then serve the package. Never returns."""
    code = 1
    try:
        os.setsid()  # its own group: a timeout kills it and whatever it started
        # Killed with the zygote, even by SIGKILL (the zygote's own cleanup never runs then).
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != zygote_pid:  # the zygote died before the line above
            return
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.dup2(requests_fd, 0)
        os.dup2(stderr_fd, 1)
        os.dup2(stderr_fd, 2)
        os.dup2(reply_fd, REPLY_FD)
        os.closerange(REPLY_FD + 1, os.sysconf("SC_OPEN_MAX"))
        workdir = request["workdir"]
        os.chdir(workdir)
        os.environ.update(HOME=workdir, TMPDIR=workdir)
        tempfile.tempdir = None
        reseed()
        from scoring import sandbox

        sandbox.serve(
            socket.socket(fileno=0),
            os.fdopen(REPLY_FD, "w", buffering=1),
            sandbox.Limits(**request["limits"]),
            Path(workdir),
            request["variables"],
        )
        code = 0
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def reseed() -> None:
    """Forked children would otherwise share the zygote's random state."""
    import random

    random.seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
