import os

from django.apps import AppConfig


class ScoringConfig(AppConfig):
    name = "scoring"
    verbose_name = "Scoring"

    def ready(self) -> None:
        import pyarrow as pa

        # Arrow's default allocator (mimalloc) gave every chunk of a batch fresh pages,
        # which the kernel must zero: half of the worker's CPU went to the kernel in
        # bench/engine_bench.py. The C library's allocator reuses the memory of one
        # chunk for the next. An operator's ARROW_DEFAULT_MEMORY_POOL still decides.
        if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
            pa.set_memory_pool(pa.system_memory_pool())
