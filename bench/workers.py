"""The Celery workers a bench scores with: started on the bench's own queue, one pool
process each (as on that many machines), named so they can be pinged, and their logs."""

import argparse
import os
import socket
import time
from pathlib import Path


def worker_counts(text: str) -> list[int]:
    counts = [int(item) for item in text.split(",") if item.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("worker counts are positive integers, e.g. 1,2,4")
    return counts


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine",
        type=lambda text: [e for e in text.split(",") if e],
        default=["celery"],
        help="celery, spark, or celery,spark: each scores the same batches, side by side",
    )
    parser.add_argument("--spark-master", default="local[2]", help="for --engine spark")


def start_workers(count: int, label: str, state: Path, env: dict[str, str]) -> list:
    """`count` Celery workers of one process each on the bench's queue, answering pings."""
    from django.conf import settings

    from deploy import services

    # The bench's own control channel, whatever database they use (a throwaway one): the
    # workers' prefix is the bench's, so they answer its pings.
    env = {"REDIS_KEY_PREFIX": settings.REDIS_KEY_PREFIX, **env}
    host = socket.gethostname()
    workers = []
    for index in range(count):
        name = f"bench{os.getpid()}-{label}-{index}@{host}"
        log = state / f"worker-{label}-{index}.log"
        log.unlink(missing_ok=True)  # a --workdir kept from an earlier run: only this one's
        process = services.celery(
            "worker",
            env,
            log,
            "-Q",
            os.environ["CELERY_QUEUE"],
            "-c",
            "1",
            "-n",
            name,
            "--without-gossip",
            "--without-mingle",
        )
        workers.append(services.Service(name, process, "", log))
    wait_answering(workers)
    return workers


def wait_answering(workers: list, timeout: float = 180) -> None:
    from portal.celery import app

    names = {worker.name for worker in workers}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker in workers:
            if worker.process.poll() is not None:
                raise RuntimeError(f"worker {worker.name} exited; see {worker.log}")
        replies = app.control.ping(destination=sorted(names), timeout=1.0)
        if {name for reply in replies for name in reply} >= names:
            return
    raise RuntimeError(f"the workers did not answer within {timeout:.0f} s")


def log_lines(workers: list) -> list[str]:
    return [
        line
        for worker in workers
        if worker.log.exists()
        for line in worker.log.read_text(errors="replace").splitlines()
    ]
