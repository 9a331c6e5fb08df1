"""The versions a serving process keeps warm: a runner each, started at first use and let go
least recently used first when their memory passes ONLINE_MEMORY_BYTES.

A sandbox is loaded as the batches load it: the package from the worker's cache of S3
(checked against its hash), in its pinned environment if it has one; the web of the portal
never unpickles it. Loading may take the batch sandbox's time; each request then has
ONLINE_TIMEOUT_SECONDS.
"""

import logging
from dataclasses import replace
from pathlib import Path

from django.conf import settings

from scoring.engine import environments, package_cache
from scoring.engine.limits import sandbox_limits
from scoring.online.directory import Version
from scoring.online.runner import Runner
from scoring.packages import storage
from scoring.sandbox.client import Sandbox

# A sandbox lives as long as the process serves its version: its CPU limit must not end it.
CPU_SECONDS = 7 * 24 * 3600
log = logging.getLogger(__name__)


def open_sandbox(version: Version, workdir: Path) -> Sandbox:
    path = package_cache.copy_of(version.file_name, version.sha256, version.id)
    if isinstance(path, storage.StorageError):
        raise path
    limits = replace(sandbox_limits(), cpu_seconds=CPU_SECONDS, threads=1, nice=0)
    sandbox = Sandbox(workdir, limits, environments.prepare(list(version.requirements)))
    sandbox.start()
    try:
        sandbox.load(path)
    except BaseException:
        sandbox.close()
        raise
    sandbox.limits = replace(limits, timeout_seconds=settings.ONLINE_TIMEOUT_SECONDS)
    return sandbox


class Fleet:
    def __init__(self, memory_bytes: int, queue_rows: int, max_wait_seconds: float):
        self.memory_bytes = memory_bytes
        self.queue_rows = queue_rows
        self.max_wait_seconds = max_wait_seconds
        self.runners: dict[int, Runner] = {}  # by version id

    def runner(self, version: Version, label: str) -> Runner:
        """The version's runner, started now if it has none (or its last one broke)."""
        runner = self.runners.get(version.id)
        if runner is None or runner.broken:
            if runner is not None:
                runner.close()
            runner = Runner(
                f"{label} v{version.number}",
                lambda workdir: open_sandbox(version, workdir),
                self.queue_rows,
                self.max_wait_seconds,
            ).start()
            self.runners[version.id] = runner
            self.trim(keep=version.id)
        return runner

    def ready(self, version: Version) -> Runner | None:
        runner = self.runners.get(version.id)
        return runner if runner is not None and runner.ready else None

    def trim(self, keep: int | None = None) -> None:
        """Let the least recently used versions go while the loaded ones hold too much; the
        one used last always stays, however small the bound."""
        held = sum(r.memory_bytes for r in self.runners.values())
        *older, _ = sorted(self.runners.items(), key=lambda item: item[1].last_used) or [None]
        for version_id, runner in older:
            if held <= self.memory_bytes:
                return
            if version_id == keep or runner.state == "loading":
                continue
            log.info("letting %s go: %d MB loaded", runner.label, held // 1024**2)
            held -= runner.memory_bytes
            del self.runners[version_id]
            runner.close()

    def let_go(self, wanted: set[int]) -> None:
        """Let go the versions no model serves any more (replaced, deleted, switched off)."""
        for version_id in [v for v in self.runners if v not in wanted]:
            self.runners.pop(version_id).close()

    def close(self) -> None:
        self.let_go(set())
