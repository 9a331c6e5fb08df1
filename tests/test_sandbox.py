"""The sandbox process: limits that stop a package, and what it cannot reach."""

import socket
import time

import pytest

from scoring.sandbox import Limits, Sandbox, SandboxError
from tests.packages import RunsAtLoad, allocate, connect, dumps, spin

FAST = Limits(timeout_seconds=5, memory_bytes=400 * 1024**2, cpu_seconds=3)


def load(tmp_path, obj, limits: Limits = FAST) -> dict:
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


def test_it_reports_its_protections(tmp_path):
    with Sandbox(tmp_path, FAST) as sandbox:
        protections = sandbox.protections
    assert protections["environment"] == "bare (no secrets)"
    assert protections["network"].startswith(("cut", "not cut: "))


def test_a_package_cannot_reach_the_network_where_the_kernel_lets_us_cut_it(tmp_path):
    with Sandbox(tmp_path, FAST) as sandbox:
        if not sandbox.protections["network"].startswith("cut"):
            pytest.skip(
                f"this kernel does not allow a network namespace: {sandbox.protections['network']}"
            )
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with pytest.raises(
            SandboxError, match=r"OSError: \[Errno 101\] Network is unreachable while loading"
        ):
            load(tmp_path, {"model": RunsAtLoad(connect, port), "features": ["a"]})


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
    import os
    import signal

    import psutil

    from scoring.zygote import Zygote

    zygote = Zygote()
    requests_read, requests_write = os.pipe()  # kept open: the sandbox waits for requests
    replies_read, replies_write = os.pipe()
    with open(tmp_path / "stderr.log", "wb") as stderr:
        pid, status_fd = zygote.spawn(
            tmp_path, FAST.__dict__, requests_read, replies_write, stderr.fileno()
        )
    for fd in (requests_read, replies_write):
        os.close(fd)
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
    for fd in (requests_write, replies_read, status_fd):
        os.close(fd)
