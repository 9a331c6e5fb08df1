"""Scratch folders named after the process that made them.

A process killed outright (a SIGKILLed worker, a Spark Python worker the executor ended)
leaves its folders behind: chunks in shared memory, a zygote's home. Each new folder of a
kind first removes that kind's folders whose owner is no longer alive.
"""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def make(kind: str, parent: str | None = None) -> Path:
    """A new folder dropscore-<kind>-<this pid>-…, after sweeping the dead owners' ones."""
    parent = parent or tempfile.gettempdir()
    sweep(kind, parent)
    return Path(tempfile.mkdtemp(prefix=f"dropscore-{kind}-{os.getpid()}-", dir=parent))


@contextlib.contextmanager
def folder(kind: str, parent: str | None = None):
    """A scratch folder for the time of the block."""
    path = make(kind, parent)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sweep(kind: str, parent: str) -> None:
    for path in Path(parent).glob(f"dropscore-{kind}-*-*"):
        owner = path.name.removeprefix(f"dropscore-{kind}-").split("-")[0]
        if owner.isdigit() and not alive(int(owner)):
            # Files a sandbox made as its own user may resist; the rest goes.
            shutil.rmtree(path, ignore_errors=True)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, as another user
        return True
    return True
