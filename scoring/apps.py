import contextlib
import os

from django.apps import AppConfig


class ScoringConfig(AppConfig):
    name = "scoring"
    verbose_name = "Scoring"

    def ready(self) -> None:
        import pyarrow as pa

        from scoring.packages import owner_deletion  # noqa: F401  (connects a user's deletion)

        # Arrow's default allocator (mimalloc) gave each chunk of a batch fresh pages,
        # which the kernel must zero: up to half of the worker's CPU. jemalloc reuses
        # them, and kept the worker's peak lowest of the three allocators at 4M rows
        # (bench/engine_bench.py). A build without jemalloc keeps the default; an
        # operator's ARROW_DEFAULT_MEMORY_POOL decides.
        if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
            with contextlib.suppress(NotImplementedError):
                pa.set_memory_pool(pa.jemalloc_memory_pool())
