"""The worker's local copies of packages, by sha256: a fleet's thousand packages are
fetched from S3 once, not once a batch, and side by side.

The sandbox never sees this folder: the worker opens a copy and hands the sandbox the
open file. A copy is checked against its hash each time it is used, as a download is.
"""

import hashlib
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from django.conf import settings

from scoring.models import PackageVersion
from scoring.packages import storage

FETCHING_THREADS = 16
log = logging.getLogger(__name__)


def folder() -> Path:
    path = Path(settings.PACKAGE_CACHE_DIR or Path(tempfile.gettempdir()) / "dropscore-packages")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def local_copies(versions) -> dict[int, Path | storage.StorageError]:
    """{version id: its local copy, or why it could not be had}."""
    versions = list({version.id: version for version in versions}.values())
    with ThreadPoolExecutor(max_workers=FETCHING_THREADS, thread_name_prefix="packages") as pool:
        copies = dict(zip([v.id for v in versions], pool.map(local_copy, versions), strict=True))
    trim(settings.PACKAGE_CACHE_BYTES)
    return copies


def local_copy(version) -> Path | storage.StorageError:
    return copy_of(version.file.name, version.sha256, version.id)


def copy_of(key: str, sha256: str, version_id: int | None = None) -> Path | storage.StorageError:
    """The local copy of the package at this key of the models bucket, checked.

    A model handed over (scoring.packages.handover) moves its packages to new keys while
    a run that read the old one may be about to fetch it: when that fails, the version's
    key is read again and, if it moved, fetched from there."""
    found = fetch(key, sha256)
    if isinstance(found, storage.StorageError) and version_id is not None:
        moved_to = current_key(version_id)
        if moved_to not in (None, key):
            log.info(
                "version %s moved from %s to %s: fetched from there", version_id, key, moved_to
            )
            return fetch(moved_to, sha256)
    return found


def current_key(version_id: int) -> str | None:
    return PackageVersion.objects.filter(id=version_id).values_list("file", flat=True).first()


def fetch(key: str, sha256: str) -> Path | storage.StorageError:
    path = folder() / f"{sha256}.dill"
    if path.exists() and sha256_of(path) == sha256:
        os.utime(path)  # recently used: the last to be trimmed
        return path
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as partial:
            try:
                storage.download(key, sha256, partial)
            except BaseException:
                os.unlink(partial.name)
                raise
        os.replace(partial.name, path)  # whole or not at all, for a worker beside us too
    except storage.StorageError as exc:
        return exc
    return path


def sha256_of(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def trim(limit: int) -> None:
    """Remove the copies used least recently while the folder holds more than `limit`."""
    copies = []
    for path in folder().glob("*.dill"):
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        copies.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in copies)
    for _, size, path in sorted(copies):
        if total <= limit:
            return
        path.unlink(missing_ok=True)
        total -= size
