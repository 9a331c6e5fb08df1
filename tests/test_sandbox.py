"""The sandbox process: limits that stop a package, and what it cannot reach.

Here the test process plays the worker: its environment holds DATABASE_URL and the
rest, as a worker's does. Each attempt a package makes is also made by the test process
itself, unconfined, so a refusal in the sandbox is the sandbox's doing.
"""

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest
from django.conf import settings

from scoring.sandbox.client import Sandbox
from scoring.sandbox.confinement import BASE_UID
from scoring.sandbox.limits import Limits, SandboxError
from tests.factories.packages import CELL, RunsAtLoad, allocate, connect, dumps, spin

FAST = Limits(timeout_seconds=5, memory_bytes=400 * 1024**2, cpu_seconds=3)
PROTECTIONS = {
    "environment",
    "files",
    "other_processes",
    "network",
    "memory",
    "time",
    "process_limit",
    "user",
}


def load(tmp_path, obj, limits: Limits = FAST) -> dict:
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "package.dill"
    path.write_bytes(dumps(obj))
    with Sandbox(tmp_path, limits) as sandbox:
        return sandbox.load(path)


def test_it_stops_a_package_that_sleeps_at_the_wall_clock_timeout(tmp_path):
    started = time.monotonic()
    with pytest.raises(
        SandboxError, match=r"timed out after 5 s while loading; the sandbox was stopped"
    ):
        load(tmp_path, {"model": RunsAtLoad(time.sleep, 3600), "features": ["a"]})
    assert time.monotonic() - started < 15


def test_it_stops_a_package_that_allocates_past_the_memory_limit(tmp_path):
    with pytest.raises(SandboxError, match=r"MB of memory while loading, over the limit of 400 MB"):
        load(tmp_path, {"model": RunsAtLoad(allocate, 4000), "features": ["a"]})


def test_it_stops_a_package_that_burns_cpu_at_the_cpu_limit(tmp_path):
    limits = Limits(timeout_seconds=30, memory_bytes=FAST.memory_bytes, cpu_seconds=1)
    with pytest.raises(SandboxError, match=r"killed by signal SIGXCPU \(CPU time limit of 1 s\)"):
        load(tmp_path, {"model": RunsAtLoad(spin), "features": ["a"]}, limits)


def protections(tmp_path) -> dict:
    tmp_path.mkdir(exist_ok=True)
    with Sandbox(tmp_path, FAST) as sandbox:
        return sandbox.protections


def require(tmp_path, name: str) -> None:
    """Skip, saying why, where this host does not give the protection under test."""
    found = protections(tmp_path / "probe")[name]
    if not found["active"]:
        pytest.skip(f"{name} on this host: {found['detail']}")


def test_it_reports_each_protection_as_active_or_not_available_and_why(tmp_path):
    found = protections(tmp_path)

    assert set(found) == PROTECTIONS
    for name, protection in found.items():
        assert isinstance(protection["active"], bool), name
        assert protection["detail"], name
        assert protection["active"] != protection["detail"].startswith("not available: "), name
    # Whatever the kernel allows, these hold everywhere: they are the zygote's and the
    # worker's doing.
    assert found["environment"]["active"], found["environment"]
    assert found["memory"]["detail"] == "400 MB of memory of its own, watched by the worker"
    assert found["time"]["detail"] == "5 s per request, 3 s of CPU"


def test_as_root_it_runs_as_a_user_of_its_own_with_a_process_limit(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the tests do not run as root: sandboxes keep the worker's user")
    found = protections(tmp_path)

    assert found["user"]["active"], found["user"]
    assert re.match(
        r"uid \d+, a user of its own: no groups, no capabilities", found["user"]["detail"]
    )
    assert found["process_limit"]["detail"] == f"at most {FAST.processes} processes and threads"


def outcomes(tmp_path, attempts: list) -> dict:
    """What happened to each attempt when a package made it at load."""
    with pytest.raises(SandboxError) as raised:
        load(tmp_path, {"model": RunsAtLoad(CELL["try_all"], attempts), "features": ["a"]})
    found = re.search(r"outcomes (\{.*\}) while loading", str(raised.value))
    assert found, str(raised.value)
    return json.loads(found.group(1))


def unconfined(attempts: list) -> dict:
    """The same attempts made by the test process itself."""
    with pytest.raises(RuntimeError) as raised:
        CELL["try_all"](attempts)
    return json.loads(str(raised.value).removeprefix("outcomes "))


@pytest.fixture
def state_dir():
    """A portal's state folder as an admin might leave it: open to every user, a .env and
    a database in it. Outside pytest's own folder, which other users cannot enter."""
    folder = Path(tempfile.mkdtemp(prefix="dropscore-state-", dir="/tmp"))
    folder.chmod(0o777)
    (folder / ".env").write_text("SECRET_KEY=the-portals-secret\n")
    (folder / "db.sqlite3").write_bytes(b"SQLite format 3\x00")
    for path in folder.iterdir():
        path.chmod(0o666)
    yield folder
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()


@pytest.fixture
def worker_with_secrets():
    """A stand-in for a worker: a process of this user whose environment and command line
    hold a database password, whatever this test run's own environment holds."""
    secret = "postgresql://dropscore:planted-secret@db.internal/prod"
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", "--password=planted-secret"],
        env={"PATH": os.environ.get("PATH", ""), "DATABASE_URL": secret},
    )
    try:
        deadline = time.monotonic() + 10
        while b"planted-secret" not in Path(f"/proc/{process.pid}/environ").read_bytes():
            assert time.monotonic() < deadline, "the stand-in worker never started"
            time.sleep(0.05)
        yield process.pid
    finally:
        process.kill()
        process.wait()


def test_a_package_cannot_read_the_workers_secrets_from_files(
    tmp_path, state_dir, worker_with_secrets
):
    require(tmp_path, "files")
    worker = worker_with_secrets
    attempts = [
        ["read", f"/proc/{worker}/environ"],  # DATABASE_URL, as in a worker's environment
        ["read", f"/proc/{worker}/cmdline"],
        ["read", f"/proc/{os.getpid()}/environ"],  # the process that started the sandbox
        ["list", "/proc"],
        ["read", str(settings.BASE_DIR / "portal" / "settings.py")],
        ["read", str(state_dir / ".env")],
        ["read", str(state_dir / "db.sqlite3")],
        ["list", str(state_dir)],
    ]
    assert b"planted-secret" in Path(f"/proc/{worker}/environ").read_bytes()
    assert set(unconfined(attempts).values()) == {"done"}

    found = outcomes(tmp_path / "run", attempts)

    assert found == {f"{a} {t}": "EACCES" for a, t in attempts}


def test_a_package_writes_in_its_own_folder_and_nowhere_else(tmp_path, state_dir):
    require(tmp_path, "files")
    name = f"dropscore-escape-{uuid.uuid4().hex}"
    elsewhere = [
        ["write", f"/tmp/{name}"],
        ["write", f"/dev/shm/{name}"],
        ["write", str(state_dir / "db.sqlite3")],
        ["write", str(Path.home() / name)],  # the worker's user's home
    ]
    workdir = tmp_path / "run"
    try:
        assert set(unconfined(elsewhere).values()) == {"done"}
    finally:
        for path in (Path(f"/tmp/{name}"), Path(f"/dev/shm/{name}"), Path.home() / name):
            path.unlink(missing_ok=True)
    (state_dir / "db.sqlite3").write_bytes(b"SQLite format 3\x00")

    found = outcomes(
        workdir,
        [
            ["write", "own.txt"],
            *elsewhere,
            ["write", str(workdir / "package.dill")],  # the worker's files in its folder
            ["write", str(settings.BASE_DIR / name)],  # the project
        ],
    )

    assert found.pop("write own.txt") == "done"
    # Refused, or a read-only view (the home is hidden behind an empty read-only folder).
    assert set(found.values()) <= {"EACCES", "EROFS"}, found
    assert (workdir / "sandbox" / "own.txt").read_text() == "written by a package"
    assert (state_dir / "db.sqlite3").read_bytes() == b"SQLite format 3\x00"
    assert not any(Path(p).exists() for p in (f"/tmp/{name}", f"/dev/shm/{name}"))
    assert not (settings.BASE_DIR / name).exists() and not (Path.home() / name).exists()


def test_a_package_cannot_signal_the_worker(tmp_path):
    require(tmp_path, "other_processes")
    attempts = [["signal", str(os.getpid())]]
    assert unconfined(attempts) == {f"signal {os.getpid()}": "done"}

    assert outcomes(tmp_path, attempts) == {f"signal {os.getpid()}": "EPERM"}


def test_a_package_cannot_reach_the_network_where_the_kernel_lets_us_cut_it(tmp_path):
    require(tmp_path, "network")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        # Cut twice over: Landlock refuses the connection (Errno 13) before the empty
        # network namespace would find no route (Errno 101).
        with pytest.raises(
            SandboxError,
            match=r"(PermissionError: \[Errno 13\] Permission denied|"
            r"OSError: \[Errno 101\] Network is unreachable) while loading",
        ):
            load(tmp_path, {"model": RunsAtLoad(connect, port), "features": ["a"]})


def test_a_package_cannot_reach_a_unix_socket_open_to_everyone(tmp_path):
    """A database's socket file is out of a network namespace's reach."""
    require(tmp_path, "network")
    path = f"/tmp/dropscore-{uuid.uuid4().hex}.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        os.chmod(path, 0o777)
        server.listen()
        try:
            assert unconfined([["connect", path]]) == {f"connect {path}": "done"}
            found = outcomes(tmp_path, [["connect", path]])
        finally:
            os.unlink(path)

    assert found == {f"connect {path}": "EACCES"}


def processes_of(uid: int) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["uids"]):
        if process.info["uids"] and process.info["uids"].real == uid:
            found.append(process)
    return found


def wait_until_none(uid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while left := [p for p in processes_of(uid) if p.status() != psutil.STATUS_ZOMBIE]:
        assert time.monotonic() < deadline, f"still running as uid {uid}: {left}"
        time.sleep(0.1)


def test_a_fork_bomb_is_stopped_at_the_process_limit(tmp_path):
    require(tmp_path, "process_limit")
    limits = Limits(timeout_seconds=60, memory_bytes=2 * 1024**3, cpu_seconds=30, processes=32)
    path = tmp_path / "package.dill"
    path.write_bytes(dumps({"model": RunsAtLoad(CELL["fork_bomb"]), "features": ["a"]}))
    started = time.monotonic()

    with Sandbox(tmp_path, limits) as sandbox:
        with pytest.raises(
            SandboxError,
            match=r"BlockingIOError: \[Errno 11\] Resource temporarily unavailable while "
            r"loading: the package reached the sandbox's limit of 32 processes and threads",
        ):
            sandbox.load(path)
        uid = BASE_UID + sandbox.process.pid
        assert 1 < len(processes_of(uid)) <= 32  # it did fork, up to the limit

    wait_until_none(uid)
    assert time.monotonic() - started < 30


def test_a_process_that_leaves_the_sandboxs_group_goes_with_the_sandbox(tmp_path):
    require(tmp_path, "user")
    path = tmp_path / "package.dill"
    path.write_bytes(dumps({"model": RunsAtLoad(CELL["leave_group"]), "features": ["a"]}))

    with Sandbox(tmp_path, FAST) as sandbox:
        with pytest.raises(SandboxError, match=r"it is a builtins.str"):
            sandbox.load(path)
        uid = BASE_UID + sandbox.process.pid
        [left] = [p for p in processes_of(uid) if p.pid != sandbox.process.pid]
        # Out of the group's kill, once the forked child has called setsid (it may not yet).
        deadline = time.monotonic() + 10
        while os.getsid(left.pid) == os.getsid(sandbox.process.pid):
            assert time.monotonic() < deadline, "the child never left the sandbox's group"
            time.sleep(0.05)

    wait_until_none(uid)


def test_without_the_cut_the_same_package_would_connect(tmp_path):
    """The control for the test above: the package itself works where there is a network."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert connect(server.getsockname()[1]) == "connected"


@pytest.mark.parametrize("ending", ["its parent goes", "it is killed"])
def test_sandboxes_die_with_their_zygote_when(ending, tmp_path):
    """A worker killed mid-batch must not leave packages running: the zygote sees its
    control socket close, kills the sandboxes it forked and exits; a zygote killed
    outright takes them along too."""
    import signal

    from scoring.sandbox.spawn import Zygote

    zygote = Zygote()
    # Our end kept open: the sandbox waits for requests.
    requests, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    replies_read, replies_write = os.pipe()
    with open(tmp_path / "stderr.log", "wb") as stderr:
        pid, status_fd = zygote.spawn(
            tmp_path, FAST.__dict__, theirs.fileno(), replies_write, stderr.fileno()
        )
    theirs.close()
    os.close(replies_write)
    time.sleep(0.5)
    assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE

    if ending == "it is killed":
        os.kill(zygote.process.pid, signal.SIGKILL)
    zygote.close()

    assert zygote.process.returncode is not None
    deadline = time.monotonic() + 5
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the sandbox outlived its zygote"
        time.sleep(0.05)
    requests.close()
    for fd in (replies_read, status_fd):
        os.close(fd)
