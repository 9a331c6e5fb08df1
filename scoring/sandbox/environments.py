"""Environments of their own for packages that pin libraries (the package's `requirements`).

An environment is a virtual environment built once with `uv` for a list of pins and this
worker's Python, in a folder named by the hash of its lock (the sorted pins, the Python
version and the worker's own site-packages), and shared by every package that pins the same.

It holds only what differs from the worker: uv resolves the pins with every library the
package does not pin held at the worker's version (constraints), and installs only the
pinned libraries and those the pins force to another version. A `.pth` file then appends
the worker's site-packages AFTER the environment's own, so the sandbox's code and its base
libraries (dill, pandas, pyarrow, numpy...) import from the worker, and a pinned library
shadows the worker's copy of it. The version comparison at validation then sees the
environment's versions (importlib.metadata reads sys.path in order).

A build goes to a temporary folder beside the others and is renamed into place once
complete, under a lock, so two workers building at once never see half an environment:
the second waits and finds the first's. A zygote started from an environment holds a
shared lock on it (`in_use`), which removal takes exclusively, so an environment in use
is never removed. No Django here: the worker's settings come in through `Store`.
"""

import fcntl
import hashlib
import importlib.metadata
import json
import os
import shutil
import site
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import uv
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

READY = "environment.json"  # written last: the environment is complete and what it holds
LAST_USED = "last-used"  # its modification time: when a sandbox last started from it
IN_USE = "in-use.lock"  # shared-locked by each zygote running from it
BUILD_PREFIX = ".build-"
DEFAULT_INDEX = "https://pypi.org/simple"
# Distributions never constrained: the portal itself is installed from its folder.
NOT_ON_INDEX = frozenset({"dropscore"})


class BuildError(Exception):
    """uv could not build the environment; the message is uv's own."""


@dataclass(frozen=True)
class Environment:
    path: Path
    requirements: tuple[str, ...]

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def complete(self) -> bool:
        return (self.path / READY).exists()

    def touch(self) -> None:
        """A sandbox starts from it: the clean-up counts its age from now."""
        (self.path / LAST_USED).touch()

    def hold(self) -> int:
        """A descriptor holding it in use (shared lock) until closed.

        Raises OSError when it was removed meanwhile (it is built again at the next use)."""
        fd = os.open(self.path / IN_USE, os.O_RDONLY | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_SH)
        if not self.complete():
            os.close(fd)
            raise FileNotFoundError(f"the environment {self.path.name} was removed")
        return fd


@dataclass(frozen=True)
class Store:
    """The worker's environments: where they live, which index they come from."""

    root: Path
    index_url: str = DEFAULT_INDEX
    build_seconds: float = 900

    def key(self, requirements: list[str]) -> str:
        lock = {"pins": sorted(requirements), "python": python_version(), "base": base_paths()}
        return hashlib.sha256(json.dumps(lock, sort_keys=True).encode()).hexdigest()[:16]

    def environment(self, requirements: list[str]) -> Environment:
        return Environment(self.root / self.key(requirements), tuple(sorted(requirements)))

    def ready(self, requirements: list[str]) -> Environment:
        """The environment of these pins, built now if no worker built it yet.

        Raises BuildError with uv's message (an unknown version, no network)."""
        environment = self.environment(requirements)
        if not environment.complete():
            self.root.mkdir(parents=True, exist_ok=True)
            with self.locked(environment.path.name):
                if not environment.complete():  # another worker built it while we waited
                    self.build(environment)
        environment.touch()
        return environment

    @contextmanager
    def locked(self, key: str) -> Iterator[None]:
        fd = os.open(self.root / f".{key}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def build(self, environment: Environment) -> None:
        started = time.monotonic()
        building = Path(
            tempfile.mkdtemp(prefix=f"{BUILD_PREFIX}{environment.path.name}-", dir=self.root)
        )
        try:
            self.uv("venv", "--python", sys.executable, str(building))
            (building / IN_USE).touch()
            site_packages = (
                building
                / "lib"
                / f"python{sys.version_info[0]}.{sys.version_info[1]}"
                / "site-packages"
            )
            # "zz": .pth files run in name order, and the worker's come after the pins'.
            lines = "".join(f"import site; site.addsitedir({path!r})\n" for path in base_paths())
            (site_packages / "zz-dropscore-worker.pth").write_text(lines)
            installed = self.install(building / "bin" / "python", list(environment.requirements))
            building.chmod(0o755)  # mkdtemp's 0700 would keep a sandbox's own user out
            details = {
                "requirements": list(environment.requirements),
                "installed": installed,
                "python": python_version(),
                "built_at": datetime.now(UTC).isoformat(),
                "build_seconds": round(time.monotonic() - started, 2),
            }
            (building / READY).write_text(json.dumps(details))
            os.rename(building, environment.path)
        finally:
            shutil.rmtree(building, ignore_errors=True)

    def install(self, python: Path, requirements: list[str]) -> list[str]:
        """Resolve the pins with the worker's other versions held, install what differs."""
        pinned = {name_of(requirement) for requirement in requirements}
        worker = worker_versions()
        constraints = [
            f"{name}=={version}" for name, version in worker.items() if name not in pinned
        ]
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "requirements.txt").write_text("\n".join(requirements) + "\n")
            (Path(folder) / "constraints.txt").write_text("\n".join(constraints) + "\n")
            lock = self.uv(
                "pip",
                "compile",
                "requirements.txt",
                "--constraint",
                "constraints.txt",
                "--python",
                str(python),
                "--no-header",
                "--no-annotate",
                "--quiet",
                cwd=folder,
            )
        resolved = [line.strip() for line in lock.splitlines() if "==" in line]
        differing = [pin for pin in resolved if worker.get(name_of(pin)) != pin.split("==", 1)[1]]
        if differing:
            self.uv("pip", "install", "--python", str(python), "--no-deps", *differing)
        return differing

    def uv(self, *args: str, cwd: str | None = None) -> str:
        command = [uv.find_uv_bin(), *args]
        if args[0] == "pip":
            command += ["--index-url", self.index_url]
        env = {**os.environ, "UV_CACHE_DIR": str(self.root / ".uv-cache"), "UV_NO_CONFIG": "1"}
        try:
            done = subprocess.run(
                command,
                cwd=cwd,
                env=env,
                capture_output=True,
                text=True,
                timeout=self.build_seconds,
            )
        except subprocess.TimeoutExpired:
            raise BuildError(f"uv took longer than {self.build_seconds:g} s") from None
        if done.returncode != 0:
            raise BuildError(done.stderr.strip() or f"uv exited with code {done.returncode}")
        return done.stdout

    def environments(self) -> list[Environment]:
        if not self.root.is_dir():
            return []
        found = []
        for path in sorted(self.root.iterdir()):
            if (path / READY).exists():
                details = json.loads((path / READY).read_text())
                found.append(Environment(path, tuple(details["requirements"])))
        return found

    def listing(self) -> list[dict]:
        """What the status page shows of each environment, the last used first."""
        rows = []
        for environment in self.environments():
            details = json.loads((environment.path / READY).read_text())
            rows.append(
                {
                    "key": environment.path.name,
                    "requirements": list(environment.requirements),
                    "installed": details["installed"],
                    "python": details["python"],
                    "built_at": details["built_at"],
                    "last_used": datetime.fromtimestamp(last_used(environment), UTC).isoformat(),
                    "bytes": size_of(environment.path),
                }
            )
        return sorted(rows, key=lambda row: row["last_used"], reverse=True)

    def remove_unused(self, *, max_age_days: float, max_bytes: int, max_count: int) -> list[str]:
        """Remove environments unused for max_age_days, then the least recently used until
        the rest fit max_count and max_bytes; never one in use. The keys removed."""
        now = time.time()
        kept_bytes, kept_count, removed = 0, 0, []
        newest_first = sorted(self.environments(), key=last_used, reverse=True)
        for environment in newest_first:
            size = size_of(environment.path)
            too_old = now - last_used(environment) > max_age_days * 86400
            over = kept_count + 1 > max_count or kept_bytes + size > max_bytes
            if (too_old or over) and self.remove(environment):
                removed.append(environment.path.name)
            else:
                kept_bytes, kept_count = kept_bytes + size, kept_count + 1
        self.remove_abandoned_builds(now)
        return removed

    def remove(self, environment: Environment) -> bool:
        """Remove it unless a zygote holds it; renamed away first, under its lock, so a
        sandbox starting from it finds it whole or not at all."""
        fd = os.open(environment.path / IN_USE, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        try:
            doomed = environment.path.with_name(f"{BUILD_PREFIX}removed-{environment.path.name}")
            os.rename(environment.path, doomed)
        finally:
            os.close(fd)
        shutil.rmtree(doomed, ignore_errors=True)
        return True

    def remove_abandoned_builds(self, now: float) -> None:
        """Builds a killed worker left half done."""
        for path in self.root.glob(f"{BUILD_PREFIX}*"):
            if now - path.stat().st_mtime > 2 * self.build_seconds:
                shutil.rmtree(path, ignore_errors=True)


def python_version() -> str:
    return ".".join(map(str, sys.version_info[:3]))


def base_paths() -> list[str]:
    """The worker's site-packages, which every environment appends after its own."""
    return [path for path in site.getsitepackages() if os.path.isdir(path)]


def name_of(requirement: str) -> str:
    return canonicalize_name(Requirement(requirement).name)


def worker_versions() -> dict[str, str]:
    """{canonical name: version} of the distributions the worker runs."""
    found = {}
    for distribution in importlib.metadata.distributions():
        name = distribution.metadata["Name"]
        if name and canonicalize_name(name) not in NOT_ON_INDEX:
            found.setdefault(canonicalize_name(name), distribution.version)
    return found


def last_used(environment: Environment) -> float:
    try:
        return (environment.path / LAST_USED).stat().st_mtime
    except FileNotFoundError:
        return (environment.path / READY).stat().st_mtime


def size_of(path: Path) -> int:
    """Bytes on disk, each file once (uv hard-links files from its cache)."""
    seen, total = set(), 0
    for folder, _, files in os.walk(path):
        for name in files:
            stat = os.lstat(os.path.join(folder, name))
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_size
    return total
