"""The keys a portal keeps in Redis, each under the portal's REDIS_KEY_PREFIX.

One Redis may serve several portals (the test suite beside `make run`, a staging beside
production): each reads and writes only its own keys, so none shows another's workers,
Spark executors or tick. The prefix is read at each call, not kept at import: a process
that sets it after importing this module (the test session) still gets its own keys.
"""

from django.conf import settings


def key(name: str) -> str:
    return f"{settings.REDIS_KEY_PREFIX}{name}"


def worker_roll() -> str:
    """A set of the names of this portal's live workers (scoring.engine.worker_roll)."""
    return key("workers")


def spark_executors() -> str:
    """A hash of host -> report of the Spark executors' sandboxes (worker_probe)."""
    return key("spark-executors")


def last_tick() -> str:
    """When beat's tick last ran, in ISO 8601, for the status page (scoring.tasks.tick)."""
    return key("last_tick")


def online_process(name: str) -> str:
    """What a serving process (`manage.py serve_online`, named host:pid) says of itself,
    rewritten every few seconds with a short expiry: a process gone stops being listed."""
    return key(f"online:process:{name}")


def online_processes() -> str:
    """The pattern of every serving process's key, for SCAN."""
    return key("online:process:*")
