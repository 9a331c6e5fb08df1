"""S3 object layout, streaming package upload and download, and per-user quotas.

Keys are made here from the owner's username, the deployment's slug and the
version number, never from user input: `<username>/<slug>/v<N>.dill`.
"""

import contextlib
import hashlib
from concurrent.futures import Future, ThreadPoolExecutor, wait
from functools import lru_cache
from typing import BinaryIO

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings

PICKLE_PROTOCOLS = range(2, 6)
READ_BLOCK = 1024 * 1024
# Multipart parts of 8 MB, two in flight: the upload holds ~16 MB whatever the file size.
TRANSFER = TransferConfig(
    multipart_threshold=8 * 1024**2, multipart_chunksize=8 * 1024**2, max_concurrency=2
)


# S3's smallest part but the last: a file of the scores table goes up as it is written.
PART_BYTES = 5 * 1024**2


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
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
        ),
    )


def arrow_filesystem():
    """The S3 server as a pyarrow filesystem, for Parquet read and written in streams."""
    from pyarrow import fs

    return fs.S3FileSystem(
        endpoint_override=settings.S3_ENDPOINT_URL.split("://", 1)[-1],
        scheme="https" if settings.S3_ENDPOINT_URL.startswith("https") else "http",
        access_key=settings.S3_ACCESS_KEY,
        secret_key=settings.S3_SECRET_KEY,
        region=settings.S3_REGION,
    )


def ensure_buckets() -> None:
    s3 = client()
    for bucket in (settings.MODELS_BUCKET, settings.SCORES_BUCKET):
        try:
            s3.head_bucket(Bucket=bucket)
        except ClientError:
            s3.create_bucket(Bucket=bucket)


def package_key(username: str, slug: str, number: int) -> str:
    return f"{username}/{slug}/v{number}.dill"


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
    """Stream a file to the models bucket in constant memory."""
    extra = {"Metadata": {"sha256": sha256}, "ContentType": "application/octet-stream"}
    fileobj.seek(0)
    try:
        if hasattr(fileobj, "temporary_file_path"):
            # From a path boto3 reads each part from disk as it goes out; from a file
            # object it copies up to ten parts (80 MB) into memory per upload.
            client().upload_file(
                fileobj.temporary_file_path(), settings.MODELS_BUCKET, key, extra, Config=TRANSFER
            )
        else:
            client().upload_fileobj(fileobj, settings.MODELS_BUCKET, key, extra, Config=TRANSFER)
    except (BotoCoreError, ClientError) as exc:
        with contextlib.suppress(StorageError):  # a half multipart upload leaves no object
            delete_objects([key])
        raise StorageError(
            f"storage is unavailable ({exc}); nothing was stored, try again"
        ) from exc


def download(key: str, sha256: str, destination: BinaryIO) -> None:
    """Fetch a package into `destination` and check it is the file that was uploaded."""
    try:
        body = client().get_object(Bucket=settings.MODELS_BUCKET, Key=key)["Body"]
        digest = hashlib.sha256()
        while block := body.read(READ_BLOCK):
            digest.update(block)
            destination.write(block)
    except (BotoCoreError, ClientError) as exc:
        raise StorageError(f"could not read {key} from storage: {exc}") from exc
    if digest.hexdigest() != sha256:
        raise StorageError(
            f"{key} does not match its sha256: the stored object was changed or damaged"
        )
    destination.flush()


def delete_objects(keys: list[str]) -> None:
    if not keys:
        return
    try:
        client().delete_objects(
            Bucket=settings.MODELS_BUCKET,
            Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True},
        )
    except (BotoCoreError, ClientError) as exc:
        raise StorageError(
            f"storage is unavailable ({exc}); nothing was deleted, try again"
        ) from exc


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


class PartUpload:
    """A file written to S3 while it grows: each PART_BYTES go up as one part of a
    multipart upload, in the background, so closing sends only the rest; the object
    appears whole at `close()`, or never (`abort()`). Holds at most two parts in memory.

    (pyarrow's S3 stream keeps 10 MB before its first part: a file of a million scores,
    8 MB, would go up only when closed, every run's file of a batch at once.) Not an
    io.RawIOBase on purpose: that one closes itself when collected, which here would
    complete an upload an error had left unfinished."""

    def __init__(self, key: str):
        self.closed = False
        self.bucket, self.key = key.split("/", 1)
        self.upload_id = client().create_multipart_upload(Bucket=self.bucket, Key=self.key)[
            "UploadId"
        ]
        self.buffer = bytearray()
        self.sent: list[Future] = []
        self.position = 0

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        """Parts go up when full: S3 takes no part under PART_BYTES but the last."""

    def write(self, data) -> int:
        self.buffer += data
        self.position += len(data)
        if len(self.buffer) >= PART_BYTES:
            self.send_part()
        return len(data)

    def tell(self) -> int:
        return self.position

    def send_part(self) -> None:
        if self.sent:
            self.sent[-1].result()  # one part in flight: raises if it failed
        body, self.buffer = bytes(self.buffer), bytearray()
        self.sent.append(
            part_uploads().submit(
                client().upload_part,
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                PartNumber=len(self.sent) + 1,
                Body=body,
            )
        )

    def close(self) -> None:
        if self.closed:
            return
        if self.buffer or not self.sent:
            self.send_part()
        parts = [
            {"PartNumber": number, "ETag": sent.result()["ETag"]}
            for number, sent in enumerate(self.sent, start=1)
        ]
        client().complete_multipart_upload(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": parts},
        )
        self.closed = True

    def abort(self) -> None:
        """Best effort: S3 drops the parts sent; a server that is down keeps them until
        its own clean-up of incomplete uploads."""
        wait(self.sent)
        with contextlib.suppress(BotoCoreError, ClientError):
            client().abort_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=self.upload_id
            )
        self.buffer.clear()
        self.closed = True


@lru_cache(maxsize=1)
def part_uploads() -> ThreadPoolExecutor:
    """Threads sending parts for every PartUpload of the process (made after a fork)."""
    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="s3-parts")
