"""What a sandbox may use, and the shape of the parent's requests to it.

Shared by the parent side (scoring.sandbox.client) and the child side
(scoring.sandbox.child).
"""

import os
from dataclasses import dataclass, field, replace

# A package's reference_scores, which the sandbox writes at load into this file of its
# working folder, opened for it by the parent (Sandbox.load).
REFERENCE_SCORES_FILE = "reference-scores.arrow"
# The request keys that name files, and how the parent opens them for the sandbox.
FILE_KEYS = {
    "path": os.O_RDONLY,
    "input": os.O_RDONLY,
    "output": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "reference": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
}
MAX_REQUEST_BYTES = 1 << 16


class SandboxError(Exception):
    """The package failed in the sandbox; the message is for the package's owner."""


class SandboxTimeout(SandboxError):
    """The package ran past its time; the sandbox was stopped."""


@dataclass(frozen=True)
class Limits:
    timeout_seconds: float = 120
    memory_bytes: int = 4 * 1024**3
    cpu_seconds: int = 600
    open_files: int = 256
    file_bytes: int = 1024**3
    # Processes and threads together: numpy, Arrow and CatBoost each start one thread a core.
    processes: int = field(default_factory=lambda: 64 + 4 * (os.cpu_count() or 1))
    # Package bytes one sandbox keeps loaded at once: beyond it, its models take turns.
    loaded_bytes: int = 256 * 1024**2
    # OpenMP and BLAS threads of its libraries; 0: as they choose (one a core). Online
    # requests of a few rows want one: waking a core's worth costs more than the rows.
    threads: int = 0
    # Below the worker that feeds it: the worker's share of the CPU (reading, handing off,
    # writing scores) is what keeps every sandbox busy. An online sandbox is the answer's
    # own critical path: it runs beside its serving process, at 0.
    nice: int = 10

    def scaled(self, models: int) -> "Limits":
        """The limits of a sandbox serving several models: CPU time is for the whole process."""
        return replace(self, cpu_seconds=self.cpu_seconds * max(1, models))
