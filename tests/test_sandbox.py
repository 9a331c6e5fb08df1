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
