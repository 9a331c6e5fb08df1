"""The sandbox limits this site sets, for validation and for batches alike."""

from django.conf import settings

from scoring.sandbox.limits import Limits


def sandbox_limits() -> Limits:
    return Limits(
        timeout_seconds=settings.SANDBOX_TIMEOUT_SECONDS,
        memory_bytes=settings.SANDBOX_MEMORY_BYTES,
        cpu_seconds=settings.SANDBOX_CPU_SECONDS,
        loaded_bytes=settings.SANDBOX_LOADED_BYTES,
    )
