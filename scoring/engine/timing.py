"""Seconds spent per phase of a batch, for the worker's log."""

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator


class Stopwatch:
    def __init__(self):
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, phase: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - started

    def each(self, phase: str, items: Iterator):
        """The items of `items`, the time spent waiting for each counted in `phase`."""
        iterator = iter(items)
        while True:
            with self(phase):
                item = next(iterator, StopIteration)
            if item is StopIteration:
                return
            yield item

    def __str__(self) -> str:
        total = time.perf_counter() - self.started
        phases = ", ".join(f"{phase} {seconds:.2f} s" for phase, seconds in self.seconds.items())
        return f"{total:.2f} s: {phases}"
