"""The worker's environments for packages that pin libraries: built where they are first
needed (validation, or a batch on a worker that has none yet), listed for the status page,
and removed by a beat task when unused for long or beyond the site's limits.

The environments live on each worker's disk (SANDBOX_ENVIRONMENTS_DIR), so the status page
asks the workers for them, as it does for their sandboxes' protections.
"""

from celery.worker.control import inspect_command
from django.conf import settings

from scoring.sandbox.environments import BuildError, Environment, Store
from scoring.sandbox.limits import SandboxError


def store() -> Store:
    return Store(
        root=settings.SANDBOX_ENVIRONMENTS_DIR,
        index_url=settings.SANDBOX_INDEX_URL,
        build_seconds=settings.SANDBOX_ENVIRONMENT_BUILD_SECONDS,
    )


def prepare(requirements: list[str]) -> Environment | None:
    """The environment a package's sandbox starts from: None (the worker's own) when it pins
    nothing. Raises SandboxError with uv's message when it cannot be built."""
    if not requirements:
        return None
    try:
        return store().ready(requirements)
    except BuildError as exc:
        raise SandboxError(
            f"the environment of its requirements ({', '.join(requirements)}) could not be "
            f"built: {exc}"
        ) from None


def remove_unused() -> list[str]:
    return store().remove_unused(
        max_age_days=settings.SANDBOX_ENVIRONMENTS_MAX_AGE_DAYS,
        max_bytes=settings.SANDBOX_ENVIRONMENTS_MAX_BYTES,
        max_count=settings.SANDBOX_ENVIRONMENTS_MAX_COUNT,
    )


@inspect_command()
def sandbox_environments(state) -> dict:
    """The status page's question to each worker: its environments (Store.listing)."""
    try:
        return {"environments": store().listing(), "error": ""}
    except OSError as exc:
        return {"environments": [], "error": str(exc)}
