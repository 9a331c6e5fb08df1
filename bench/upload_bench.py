"""Fifty concurrent uploads of 50 MB packages through the real web server, in bounded memory.

Starts a SeaweedFS S3 server and the portal under gunicorn on 127.0.0.1 (the production
server; --processes sync workers, or gthread workers as the Dockerfile runs them with
--threads 4), makes one user with an API token per client, and has the clients (threads)
POST a package each to /api/v1/models/ at the same moment, streaming the file from disk
(requests-toolbelt's MultipartEncoder; one user per client, as an upload holds its user's
lock). A package is a valid dill package, a scikit-learn pipeline padded to its size with
an incompressible numpy array, different for every client. While they upload, the
resident memory (RSS) of the server's processes, the master and its workers, is sampled
every 50 ms, and the bytes in its temporary upload folder.

It runs once per package size, 5 MB and 50 MB by default, and checks that every upload
got 201, that every version exists with the sha256 of the file sent, and that every
object in S3 reads back with that sha256.

    DATABASE_URL=postgresql://... .venv/bin/python bench/upload_bench.py
    .venv/bin/python bench/upload_bench.py --processes 2 --threads 4   # the Dockerfile's gthread

The data lives in a throwaway database made beside DATABASE_URL's (dropped at the end)
and in a temporary folder; no worker runs, so the versions stay pending.

Bound: an upload streams to a temporary file and from it to S3, so no server process ever
holds a package: at every size, no process grows by more than PER_UPLOAD_MB per upload it
serves at once (1 with sync workers, --threads with gthread), and the server's peak RSS is
at most its RSS at rest plus PER_UPLOAD_MB per upload served at once. Were a package read
into memory, a process serving 50 MB uploads would grow by 50 MB or more for each.
"""

import argparse
import hashlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import database_url_for, process_trees, throwaway_database, verdict  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

PER_UPLOAD_MB = 32  # what one upload in flight may add to a server process
MB = 1024**2


def make_packages(folder: Path, clients: int, size_mb: int) -> list[tuple[Path, str]]:
    """`clients` packages of about `size_mb` MB each, and their sha256; kept for a next run."""
    import dill
    import numpy as np

    from tests.factories.packages import sklearn_package

    folder.mkdir(parents=True, exist_ok=True)
    base = sklearn_package()
    padding = None
    made = []
    for client in range(clients):
        path = folder / f"package-{size_mb}mb-{client:02d}.dill"
        if not path.exists():
            if padding is None:  # random bytes: S3 and the disk cannot compress them away
                padding = np.frombuffer(os.urandom(size_mb * MB - 64 * 1024), dtype=np.uint8)
            package = {**base, "meta": {"client": client}, "lookup_table": padding}
            with open(path, "wb") as file:
                dill.dump(package, file, recurse=True)
        made.append((path, file_sha256(path)))
    return made


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(MB):
            digest.update(block)
    return digest.hexdigest()


class Sampler(threading.Thread):
    """Every 50 ms: each server process's RSS, their total, and the bytes of upload temp files."""

    def __init__(self, server_pid: int, temp_dir: Path):
        super().__init__(daemon=True)
        self.server_pid, self.temp_dir = server_pid, temp_dir
        self.stop_event = threading.Event()
        self.peak_total = self.peak_temp = 0
        self.peak_by_pid: dict[int, int] = {}

    def rss(self) -> dict[int, int]:
        import psutil

        found = {}
        for process in process_trees([self.server_pid]):
            try:
                found[process.pid] = process.memory_info().rss
            except psutil.Error:
                continue
        return found

    def temp_bytes(self) -> int:
        total = 0
        for entry in os.scandir(self.temp_dir):
            try:
                total += entry.stat().st_size
            except FileNotFoundError:  # removed while we looked: the upload is done
                continue
        return total

    def run(self) -> None:
        while not self.stop_event.wait(0.05):
            rss = self.rss()
            self.peak_total = max(self.peak_total, sum(rss.values()))
            for pid, value in rss.items():
                self.peak_by_pid[pid] = max(self.peak_by_pid.get(pid, 0), value)
            self.peak_temp = max(self.peak_temp, self.temp_bytes())


def start_server(port: int, processes: int, threads: int, env: dict, log: Path):
    from deploy import services

    command = [
        str(services.BIN / "gunicorn"),
        "portal.wsgi",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(processes),
        "--worker-class",
        "gthread" if threads > 1 else "sync",
        "--threads",
        str(threads),
        "--timeout",
        "300",
    ]
    with open(log, "ab") as out:
        server = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    services.wait_for(lambda: services.port_open("127.0.0.1", port), "gunicorn", 60, server, log)
    return server


def upload(url: str, token: str, path: Path, name: str) -> dict:
    import requests
    from requests_toolbelt import MultipartEncoder

    with open(path, "rb") as file:
        body = MultipartEncoder(
            fields={"file": (path.name, file, "application/octet-stream"), "name": name}
        )
        started = time.perf_counter()
        response = requests.post(
            url,
            data=body,
            headers={"Content-Type": body.content_type, "Authorization": f"Token {token}"},
            timeout=900,
        )
    seconds = time.perf_counter() - started
    try:
        payload = response.json()
    except ValueError:
        payload = {"detail": response.text[:300]}
    return {"status": response.status_code, "body": payload, "seconds": seconds}


def warm_up(base: str, tokens: list[str], package: Path, count: int) -> None:
    """Small uploads first, `count` at a time, so every server process has loaded its views,
    libraries and S3 client before the figures at rest are taken, not during the uploads."""

    def send(index: int) -> None:
        result = upload(f"{base}/api/v1/models/", tokens[index], package, "warm-up")
        assert result["status"] == 201, result

    with ThreadPoolExecutor(max_workers=count) as pool:
        list(pool.map(send, range(min(len(tokens), count * 4))))


def check_stored(users: list, packages: list[tuple[Path, str]], name: str) -> list[str]:
    """Every user's version of `name` has the file's sha256, and its object reads back with it."""
    from scoring.models import PackageVersion
    from scoring.packages import storage

    class Discard:
        def write(self, block: bytes) -> None:
            pass

        def flush(self) -> None:
            pass

    problems = []
    for user, (path, sha256) in zip(users, packages, strict=True):
        version = PackageVersion.objects.filter(
            deployment__owner=user, deployment__name=name
        ).first()
        if version is None:
            problems.append(f"{user.username}: no version of {name}")
            continue
        if version.sha256 != sha256 or version.size != path.stat().st_size:
            problems.append(f"{user.username}: {name} stored as {version.sha256[:12]} ...")
            continue
        try:
            storage.download(version.file.name, sha256, Discard())  # raises on another sha256
        except storage.StorageError as exc:
            problems.append(f"{user.username}: {exc}")
    return problems


def run_size(size_mb: int, args, users, tokens, base: str, sampler_for) -> dict:
    packages = make_packages(args.work / "packages", args.clients, size_mb)
    name = f"load-{size_mb}mb"
    sampler = sampler_for()
    at_rest = sampler.rss()
    sampler.start()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.clients) as pool:
        results = list(
            pool.map(
                lambda i: upload(f"{base}/api/v1/models/", tokens[i], packages[i][0], name),
                range(args.clients),
            )
        )
    wall = time.perf_counter() - started
    time.sleep(0.2)
    sampler.stop_event.set()
    sampler.join()
    problems = [
        f"client {i}: {r['status']} {r['body'].get('detail', r['body'])}"
        for i, r in enumerate(results)
        if r["status"] != 201
    ]
    for i, result in enumerate(results):
        versions = result["body"].get("versions") or [{}]
        if result["status"] == 201 and versions[0].get("sha256") != packages[i][1]:
            problems.append(f"client {i}: the API answered sha256 {versions[0].get('sha256')}")
    problems += check_stored(users, packages, name)
    leftovers = list(args.temp_dir.iterdir())
    if leftovers:
        problems.append(f"{len(leftovers)} temporary upload files were left behind")
    sizes = [path.stat().st_size for path, _ in packages]
    growth = {pid: peak - at_rest.get(pid, 0) for pid, peak in sampler.peak_by_pid.items()}
    return {
        "size_mb": size_mb,
        "file_mb": sum(sizes) / len(sizes) / MB,
        "wall": wall,
        "throughput": sum(sizes) / MB / wall,
        "slowest": max(r["seconds"] for r in results),
        "at_rest": sum(at_rest.values()),
        "peak": sampler.peak_total,
        "process_growth": max(growth.values()),
        "peak_temp": sampler.peak_temp,
        "problems": problems,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=50, help="concurrent uploads")
    parser.add_argument(
        "--sizes", default="5,50", help="package sizes in MB, one round each (default 5,50)"
    )
    parser.add_argument("--processes", type=int, default=4, help="gunicorn worker processes")
    parser.add_argument(
        "--threads", type=int, default=1, help="threads per process (above 1: gthread workers)"
    )
    parser.add_argument(
        "--workdir", default=None, help="keep the packages here for a next run (default: none)"
    )
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    args.work = Path(args.workdir or tempfile.mkdtemp(prefix="dropscore-upload-bench-"))
    state = args.work / "state"
    args.temp_dir = args.work / "upload-tmp"
    for folder in (state, args.temp_dir, args.work / "packages"):
        folder.mkdir(parents=True, exist_ok=True)
    queue = f"bench-upload-{os.getpid()}"
    os.environ.update(
        {
            "DROPSCORE_STATE_DIR": str(state),
            "MODELS_BUCKET": "bench-upload-models",
            "CELERY_QUEUE": queue,  # validations wait there: no worker reads it
            "QUOTA_BYTES": str(4 * max(sizes) * MB),
        }
    )
    from deploy import services

    started = []
    server = None
    try:
        s3 = services.start_seaweedfs(state, "dropscore", "dropscore-secret")
        started.append(s3)
        os.environ["S3_ENDPOINT_URL"] = s3.url

        import dill
        import django

        django.setup()
        from django.conf import settings
        from django.contrib.auth.models import User
        from django.db import connection
        from rest_framework.authtoken.models import Token

        from scoring.packages import storage
        from tests.factories.packages import sklearn_package

        if not services.redis_reachable(settings.REDIS_URL):
            print(f"no Redis at {settings.REDIS_URL}: start one or set REDIS_URL", file=sys.stderr)
            return 2
        with throwaway_database("bench_upload") as test_name:
            try:
                storage.ensure_buckets()
                users = [User(username=f"load-{i:02d}") for i in range(args.clients)]
                users = User.objects.bulk_create(users)
                tokens = [Token.objects.create(user=user).key for user in users]
                connection.close()  # the server's processes are the ones that write now

                port = services.free_port()
                database_url = database_url_for(test_name)
                server = start_server(
                    port,
                    args.processes,
                    args.threads,
                    {
                        "DATABASE_URL": database_url,
                        "DEBUG": "false",
                        "SECRET_KEY": secrets.token_urlsafe(32),
                        "ALLOWED_HOSTS": "127.0.0.1",
                        "SECURE_SSL_REDIRECT": "false",  # plain http on loopback
                        "TMPDIR": str(args.temp_dir),  # where Django writes upload temp files
                    },
                    state / "gunicorn.log",
                )
                base = f"http://127.0.0.1:{port}"
                small = args.work / "packages" / "warm-up.dill"
                small.write_bytes(dill.dumps(sklearn_package(), recurse=True))
                warm_up(base, tokens, small, args.processes * args.threads)
                time.sleep(1)
                results = [
                    run_size(
                        size, args, users, tokens, base, lambda: Sampler(server.pid, args.temp_dir)
                    )
                    for size in sizes
                ]
            finally:
                if server is not None:
                    server.terminate()
                    server.wait(timeout=30)
                import redis

                redis.Redis.from_url(settings.REDIS_URL).delete(queue)
    finally:
        for service in reversed(started):
            service.stop()
        # The S3 data went with the database; the packages stay only in a --workdir.
        shutil.rmtree(args.work if args.workdir is None else state, ignore_errors=True)
    return report(results, args)


def report(results: list[dict], args) -> int:
    at_once = args.processes * args.threads
    kind = f"{args.threads} threads (gthread)" if args.threads > 1 else "sync"
    print(
        f"\n{args.clients} concurrent uploads to gunicorn, {args.processes} processes x {kind} "
        f"= {at_once} served at once; RSS of the master and its workers, sampled every 50 ms"
    )
    broken = []
    for r in results:
        bound = r["at_rest"] + at_once * PER_UPLOAD_MB * MB
        print(
            f"  {r['file_mb']:>5.1f} MB packages: {r['throughput']:>5.0f} MB/s "
            f"({args.clients} in {r['wall']:.1f} s, slowest {r['slowest']:.1f} s); "
            f"server RSS {r['at_rest'] / MB:.0f} MB at rest, peak {r['peak'] / MB:.0f} MB "
            f"(bound {bound / MB:.0f} MB); one process grew by at most "
            f"{r['process_growth'] / MB:.0f} MB (bound {args.threads * PER_UPLOAD_MB} MB); "
            f"temp files on disk peak {r['peak_temp'] / MB:.0f} MB"
        )
        if r["peak"] > bound:
            broken.append(f"{r['size_mb']} MB: peak RSS {r['peak'] / MB:.0f} MB")
        if r["process_growth"] > args.threads * PER_UPLOAD_MB * MB:
            broken.append(f"{r['size_mb']} MB: a process grew by {r['process_growth'] / MB:.0f} MB")
        broken += [f"{r['size_mb']} MB: {problem}" for problem in r["problems"]]
        if not r["problems"]:
            print(
                f"           all {args.clients} versions stored with the sha256 sent, "
                "their objects read back with it, no temporary file left"
            )
    if len(results) > 1:
        small, large = results[0], results[-1]
        print(
            f"  from {small['file_mb']:.0f} MB to {large['file_mb']:.0f} MB packages the peak "
            f"moved by {(large['peak'] - small['peak']) / MB:+.0f} MB"
        )
    print(
        f"  bound: at rest + {PER_UPLOAD_MB} MB per upload served at once, whatever the "
        "package size"
    )
    return verdict(broken)


if __name__ == "__main__":
    sys.exit(main())
