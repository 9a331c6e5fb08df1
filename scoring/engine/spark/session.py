"""The worker process's Spark session: started at its first Spark batch, kept for the next.

Starting one costs a JVM (5-6 s and 0.3-0.45 GB on an idle 2-core machine, more on a
cluster where executors are granted); a batch then costs a job. The session is configured from
SPARK_MASTER, a cluster's spark-defaults.conf (SPARK_DEFAULTS_FILE) and SPARK_CONF_*
variables, in that order.

The JVM, and through it every Python worker of a local master, starts from an environment
without the worker's secrets (database, broker, mail, Django's key): executors get only
what a task brings, the S3 key the scores are written with.
"""

import contextlib
import logging
import os
import sys
import threading
import time

from django.conf import settings

# What the JVM and its Python workers inherit of the worker's environment; the rest (the
# worker's secrets among it) stays out.
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "LD_LIBRARY_PATH", "TZ")
INHERITED_PREFIXES = ("JAVA_", "SPARK_", "PYSPARK_", "HADOOP_", "YARN_", "KRB5")
# Spark's own defaults that the engine relies on.
ENGINE_CONF = {
    "spark.ui.enabled": "false",  # a web server the portal does not need
    "spark.ui.showConsoleProgress": "false",  # progress bars in the worker's log
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}

log = logging.getLogger(__name__)
_session = None
_pid = None
_lock = threading.Lock()


def get():
    """This process's session, started at first use (or again if its JVM stopped)."""
    global _session, _pid
    with _lock:
        if _session is None or _pid != os.getpid() or _session.sparkContext._jsc is None:
            _session, _pid = start(), os.getpid()
        return _session


def configuration() -> dict[str, str]:
    # Record batches of a chunk's rows: fewer, larger hand-offs from the JVM to Python.
    conf = {**ENGINE_CONF, "spark.sql.execution.arrow.maxRecordsPerBatch": str(settings.CHUNK_ROWS)}
    if settings.SPARK_DEFAULTS_FILE:
        conf.update(read_defaults(settings.SPARK_DEFAULTS_FILE))
    conf.update(settings.SPARK_CONF)
    return conf


def read_defaults(path: str) -> dict[str, str]:
    """spark-defaults.conf: `key value` (or `key=value`) a line, # comments."""
    found = {}
    with open(path) as file:
        for line in file:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, _, value = line.replace("=", " ", 1).partition(" ")
            found[key.strip()] = value.strip()
    return found


def start():
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master(settings.SPARK_MASTER).appName("dropscore")
    for key, value in configuration().items():
        builder = builder.config(key, value)
    started = time.perf_counter()
    with environment_without_secrets():
        spark = builder.getOrCreate()
    log.info(
        "Spark session on %s started in %.2f s",
        settings.SPARK_MASTER,
        time.perf_counter() - started,
    )
    return spark


@contextlib.contextmanager
def environment_without_secrets():
    """os.environ as the JVM is to inherit it, for the time it starts."""
    kept = dict(os.environ)
    # The Python workers run this worker's interpreter (its venv), unless told otherwise.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    for name in list(os.environ):
        if name not in INHERITED and not name.startswith(INHERITED_PREFIXES):
            del os.environ[name]
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(kept)
