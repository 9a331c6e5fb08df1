"""The zygote process: a warm interpreter that forks sandboxes, so a package's libraries
are imported once per worker.

It is started the way a sandbox is (scoring.sandbox.spawn) — isolated interpreter, bare
environment, its own session and empty folder — and holds nothing but imported
libraries, so what it forks knows no more than a fresh sandbox would. Each child first
drops what the zygote held (its control socket, the other children's pipes), then serves
one package (scoring.sandbox.child), which sets its limits before it reads a byte of it.

The child belongs to the zygote, so only the zygote can wait for it: it writes each
child's exit status to a pipe the parent reads, and as root it then kills whatever still
runs as the child's user (a process that left its group). When the parent goes away
(the socket closes), the zygote kills its children and exits.
"""

import ctypes
import gc
import importlib
import json
import os
import select
import signal
import socket
import sys
import tempfile
from pathlib import Path

from scoring.sandbox.confinement import BASE_UID

# What most packages need; imported once in the zygote, shared by every child.
PRELOAD = (
    "numpy",
    "pandas",
    "pyarrow",
    "pyarrow.ipc",
    "dill",
    "sklearn",
    "catboost",
    "lightgbm",
    "xgboost",
)
REPLY_FD = 3  # a child's reply pipe, right after stdin, stdout and stderr
PR_SET_PDEATHSIG = 1


def main() -> None:
    control = socket.socket(fileno=int(os.environ.pop("DROPSCORE_CONTROL_FD")))
    bare = set(os.environ)
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
    # After the libraries (the variables they set are told apart below): the child's side
    # and, through it, the package contract.
    from scoring.sandbox import child

    child.environment.providers()  # read once here, for every sandbox forked after
    # The libraries' objects, out of the collector's sight in every child: a full collection
    # over them took ~70 ms, a pause in the middle of an online request (and their pages
    # stay shared with the zygote instead of being written by the collector).
    gc.collect()
    gc.freeze()

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
        from scoring.sandbox import child
        from scoring.sandbox.limits import Limits

        child.serve(
            socket.socket(fileno=0),
            os.fdopen(REPLY_FD, "w", buffering=1),
            Limits(**request["limits"]),
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
