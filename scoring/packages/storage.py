"""The models bucket: package keys, a Django storage for packages, buckets set up, quotas' units.

Keys are made here from the owner, the deployment's slug and the version number, never
from user input: `<username>/<slug>/v<N>.dill` for a person's model,
`teams/<team slug>/<slug>/v<N>.dill` for a team's (a key of one more level: never a
person's). A version's
`file`, a FileField on STORAGES["packages"] (PackageStorage), holds exactly that key.
"""

import contextlib
import hashlib
import logging
import threading
from collections.abc import Iterator
from functools import lru_cache
from typing import BinaryIO

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from django.core.exceptions import SuspiciousFileOperation
from django.core.files import File
from django.core.files.storage import storages
from django.core.signals import setting_changed
from django.dispatch import receiver
from storages.backends.s3 import S3Storage
from storages.utils import clean_name

log = logging.getLogger(__name__)

PICKLE_PROTOCOLS = range(2, 6)
READ_BLOCK = 1024 * 1024
# Multipart parts of 8 MB, two in flight: the upload holds ~16 MB whatever the file size.
TRANSFER = TransferConfig(
    multipart_threshold=8 * 1024**2, multipart_chunksize=8 * 1024**2, max_concurrency=2
)
CLIENT_CONFIG = Config(
    signature_version="s3v4",
    s3={"addressing_style": "path"},
    retries={"max_attempts": 3, "mode": "standard"},
    connect_timeout=5,
    read_timeout=60,
)
# S3 keeps the parts of an upload that was never completed nor aborted (the server died
# mid-upload, so the abort could not reach it) until a lifecycle rule aborts it.
ABORT_UNFINISHED_UPLOADS_DAYS = 1
ABORT_RULE_ID = "dropscore-abort-unfinished-uploads"
ABORT_RULE = {
    "ID": ABORT_RULE_ID,
    "Status": "Enabled",
    "Filter": {"Prefix": ""},
    "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": ABORT_UNFINISHED_UPLOADS_DAYS},
}

S3_SETTINGS = {"S3_ENDPOINT_URL", "S3_ACCESS_KEY", "S3_SECRET_KEY", "S3_REGION", "MODELS_BUCKET"}

# What any S3 call may raise: botocore's errors, and boto3's transfer wrapping a refusal.
S3_ERRORS = (BotoCoreError, ClientError, Boto3Error)


class StorageError(Exception):
    """S3 failed or refused; nothing was changed."""


class NotAPickle(ValueError):
    pass


@lru_cache(maxsize=1)
def client():
    return boto3.client(
        "s3",
        endpoint_url=settings.S3_ENDPOINT_URL or None,
        aws_access_key_id=settings.S3_ACCESS_KEY,
        aws_secret_access_key=settings.S3_SECRET_KEY,
        region_name=settings.S3_REGION,
        config=CLIENT_CONFIG,
    )


def arrow_filesystem():
    """The S3 server as a pyarrow filesystem, for Parquet read and written in streams."""
    from pyarrow import fs

    return fs.S3FileSystem(**arrow_filesystem_options())


def arrow_filesystem_options() -> dict:
    """pyarrow's S3FileSystem arguments for the S3 server (a Spark task opens its own)."""
    return {
        "endpoint_override": settings.S3_ENDPOINT_URL.split("://", 1)[-1],
        "scheme": "https" if settings.S3_ENDPOINT_URL.startswith("https") else "http",
        "access_key": settings.S3_ACCESS_KEY,
        "secret_key": settings.S3_SECRET_KEY,
        "region": settings.S3_REGION,
    }


# --- the package storage ----------------------------------------------------------------


class PackageFile(File):
    """A package on its way to the bucket: its file and the sha256 stored beside it."""

    def __init__(self, file: BinaryIO, sha256: str):
        super().__init__(file)
        self.sha256 = sha256

    def path_on_disk(self) -> str | None:
        """Where the upload handler spooled the package, if it did."""
        path = getattr(self.file, "temporary_file_path", None)
        return path() if path else None


class PackageStorage(S3Storage):
    """The models bucket as a Django storage, on django-storages' S3 backend.

    It takes the bucket, endpoint, keys and region from MODELS_BUCKET and the S3_*
    settings, as client() does, so both always talk to the same server; STORAGES'
    OPTIONS set the rest of django-storages' options.
    What it changes of S3Storage, and why:

    - a name is stored as it is given: keys are made by the server and a version's row
      holds exactly its object's key, so nothing may number, clean or cut it (a new
      version's key that already has an object is a leftover of a failed delete);
    - a package goes up from its temporary file's path, with its sha256 as metadata:
      from a path boto3 reads each part from disk as it goes out, from a file object it
      copies up to ten parts (80 MB) into memory per upload;
    - a package is read as a stream: S3File would copy it whole into a spooled file
      first, in memory with the default AWS_S3_MAX_MEMORY_SIZE.
    """

    def get_default_settings(self) -> dict:
        return {
            **super().get_default_settings(),
            **self.server_settings(),
            "client_config": CLIENT_CONFIG,
            "transfer_config": TRANSFER,
            "object_parameters": {"ContentType": "application/octet-stream"},
        }

    @staticmethod
    def server_settings() -> dict:
        return {
            "bucket_name": settings.MODELS_BUCKET,
            "endpoint_url": settings.S3_ENDPOINT_URL or None,
            "access_key": settings.S3_ACCESS_KEY,
            "secret_key": settings.S3_SECRET_KEY,
            "region_name": settings.S3_REGION,
        }

    def reconnect(self) -> None:
        """Follow the S3 settings again, dropping the connections made with the old ones:
        the instance lives as long as the process (PackageVersion.file holds it), and
        tests point the settings at their own server at run time."""
        self.__dict__.update(self.server_settings())
        self._connections = threading.local()
        self._bucket = None

    def get_available_name(self, name: str, max_length: int | None = None) -> str:
        """The name itself, or a refusal: never another name than the row will hold."""
        if clean_name(name) != name or (max_length and len(name) > max_length):
            raise SuspiciousFileOperation(f"{name!r} is not a package key made by package_key")
        return name

    def _get_write_parameters(self, name: str, content=None) -> dict:
        return {
            **super()._get_write_parameters(name, content),
            "Metadata": {"sha256": content.sha256},
        }

    def _save(self, name: str, content: PackageFile) -> str:
        """From the temporary file's path where there is one, else from the file object."""
        path = content.path_on_disk()
        if path is None:
            return super()._save(name, content)
        self.bucket.Object(self._normalize_name(name)).upload_file(
            path, ExtraArgs=self._get_write_parameters(name, content), Config=self.transfer_config
        )
        return name

    def _open(self, name: str, mode: str = "rb") -> File:
        """The object's body as a stream, read as it comes (the caller checks the hash)."""
        if mode != "rb":
            raise ValueError("a package is read in 'rb' mode; it is written by save()")
        key = self._normalize_name(clean_name(name))
        try:
            body = self.connection.meta.client.get_object(Bucket=self.bucket_name, Key=key)
        except ClientError as exc:
            if exc.response["ResponseMetadata"]["HTTPStatusCode"] == 404:
                raise FileNotFoundError(f"no object {key} in {self.bucket_name}") from exc
            raise
        return File(body["Body"], name)

    def delete_many(self, names: list[str]) -> None:
        """One request for a deployment's packages: with S3 down, none of them is deleted."""
        response = self.bucket.delete_objects(
            Delete={"Objects": [{"Key": self._normalize_name(n)} for n in names], "Quiet": True}
        )
        for error in response.get("Errors", []):  # the rows go: such an object is an orphan
            log.warning("could not delete %s: %s", error.get("Key"), error.get("Message"))


def packages() -> PackageStorage:
    """STORAGES["packages"]: the one instance PackageVersion.file uses too."""
    return storages["packages"]


def reconnect() -> None:
    """Forget the S3 connections: the next use reads the S3 settings again."""
    client.cache_clear()
    packages().reconnect()


@receiver(setting_changed)
def follow_the_s3_settings(setting: str, **_) -> None:
    """A test that points the S3 settings elsewhere (override_settings, pytest-django's
    `settings`) talks to that server, and to the former one again when it is done."""
    if setting in S3_SETTINGS:
        reconnect()


# --- buckets ------------------------------------------------------------------------------


def ensure_buckets() -> dict[str, bool]:
    """Make the buckets that are missing, each with the rule that aborts unfinished uploads;
    for each bucket, whether the server kept the rule."""
    s3 = client()
    kept = {}
    for bucket in (settings.MODELS_BUCKET, settings.SCORES_BUCKET):
        try:
            s3.head_bucket(Bucket=bucket)
        except ClientError:
            s3.create_bucket(Bucket=bucket)
        kept[bucket] = abort_unfinished_uploads(bucket)
    return kept


def abort_unfinished_uploads(bucket: str) -> bool:
    """Set the lifecycle rule aborting multipart uploads left unfinished; whether the server
    kept it. The bucket's other rules stay (a PUT replaces the whole configuration). A
    server that refuses or drops the rule (MinIO: it purges such uploads itself after 24
    hours) or a key not allowed to set it leaves the bucket as it was, with a warning."""
    try:
        rules = [rule for rule in lifecycle_rules(bucket) if rule.get("ID") != ABORT_RULE_ID]
        client().put_bucket_lifecycle_configuration(
            Bucket=bucket, LifecycleConfiguration={"Rules": [*rules, ABORT_RULE]}
        )
        kept = any(
            rule.get("ID") == ABORT_RULE_ID and "AbortIncompleteMultipartUpload" in rule
            for rule in lifecycle_rules(bucket)
        )
    except ClientError as exc:
        log.warning(
            "%s: unfinished uploads are left to the server's own clean-up (%s)", bucket, exc
        )
        return False
    if not kept:
        log.warning("%s: the server dropped the rule aborting unfinished uploads", bucket)
    return kept


def lifecycle_rules(bucket: str) -> list[dict]:
    try:
        return client().get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NoSuchLifecycleConfiguration":
            return []
        raise


# --- packages -----------------------------------------------------------------------------


def package_key(deployment, number: int) -> str:
    return f"{owner_folder(deployment)}/{deployment.slug}/v{number}.dill"


def owner_folder(deployment) -> str:
    """The folder of the deployment's owner in the models bucket."""
    if deployment.team_id:
        return f"teams/{deployment.team.slug}"
    return deployment.owner.username


def check_pickle_header(head: bytes) -> None:
    """Refuse at once what cannot be a dill package, before anything is stored."""
    if not head:
        raise NotAPickle("the file is empty")
    if len(head) < 2 or head[0] != 0x80 or head[1] not in PICKLE_PROTOCOLS:
        raise NotAPickle(
            "this file is not a pickle: a .dill or .pkl package made with dill.dump starts "
            "with the pickle header (0x80 and a protocol from 2 to 5)"
        )


def sha256_of(fileobj: BinaryIO) -> str:
    digest = hashlib.sha256()
    fileobj.seek(0)
    while block := fileobj.read(READ_BLOCK):
        digest.update(block)
    fileobj.seek(0)
    return digest.hexdigest()


def upload(fileobj: BinaryIO, key: str, sha256: str) -> None:
    """Store a package at `key` in constant memory, or raise StorageError having stored nothing."""
    try:
        packages().save(key, PackageFile(fileobj, sha256))
    except S3_ERRORS as exc:
        with contextlib.suppress(StorageError):  # a half multipart upload leaves no object
            delete_objects([key])
        raise StorageError(
            f"storage is unavailable ({exc}); nothing was stored, try again"
        ) from exc


def download(key: str, sha256: str, destination: BinaryIO) -> None:
    """Fetch a package into `destination` and check it is the file that was uploaded."""
    digest = hashlib.sha256()
    try:
        with packages().open(key) as package:
            while block := package.read(READ_BLOCK):
                digest.update(block)
                destination.write(block)
    except (*S3_ERRORS, FileNotFoundError) as exc:
        raise StorageError(f"could not read {key} from storage: {exc}") from exc
    if digest.hexdigest() != sha256:
        raise StorageError(
            f"{key} does not match its sha256: the stored object was changed or damaged"
        )
    destination.flush()


def read_blocks(key: str, sha256: str) -> Iterator[bytes]:
    """A package's bytes as they come from S3, for a download: the object is opened at once
    (a missing one or S3 down is a StorageError before any byte), and a stream that does not
    end with `sha256` stops with one instead of ending (the client sees a cut download)."""
    try:
        package = packages().open(key)
    except (*S3_ERRORS, FileNotFoundError) as exc:
        raise StorageError(f"could not read {key} from storage: {exc}") from exc

    def blocks() -> Iterator[bytes]:
        digest = hashlib.sha256()
        with package:
            while block := package.read(READ_BLOCK):
                digest.update(block)
                yield block
        if digest.hexdigest() != sha256:
            raise StorageError(f"{key} does not match its sha256: the stored object was changed")

    return blocks()


def delete_objects(keys: list[str]) -> None:
    if not keys:
        return
    try:
        packages().delete_many(keys)
    except S3_ERRORS as exc:
        raise StorageError(
            f"storage is unavailable ({exc}); nothing was deleted, try again"
        ) from exc


def copy_objects(moves: dict[str, str]) -> None:
    """Copy each object at a key of `moves` to its new key, inside the server (CopyObject:
    the bytes never pass through us), with its metadata (the sha256) as it is. On a failure
    the copies made so far are removed and StorageError raised: the old keys are untouched."""
    made: list[str] = []
    try:
        for old, new in moves.items():
            client().copy_object(
                Bucket=settings.MODELS_BUCKET,
                Key=new,
                CopySource={"Bucket": settings.MODELS_BUCKET, "Key": old},
                MetadataDirective="COPY",
            )
            made.append(new)
    except S3_ERRORS as exc:
        try:
            delete_objects(made)
        except StorageError:
            log.exception("could not remove the copies %s after a failed copy", made)
        raise StorageError(f"storage is unavailable ({exc}); nothing was moved, try again") from exc


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            text = (
                f"{value:.0f}" if unit == "B" or value >= 100 else f"{value:.1f}".removesuffix(".0")
            )
            return f"{text} {unit}"
        value /= 1024
    return f"{value:.1f} TB"
