"""A file of the scores table written to S3 while it grows, in parts."""

import contextlib
from concurrent.futures import Future, ThreadPoolExecutor, wait
from functools import lru_cache

from botocore.exceptions import BotoCoreError, ClientError

from scoring.packages.storage import client

# S3's smallest part but the last: a file of the scores table goes up as it is written.
PART_BYTES = 5 * 1024**2


class PartUpload:
    """A file written to S3 while it grows: each PART_BYTES go up as one part of a
    multipart upload, in the background, so closing sends only the rest; the object
    appears whole at `close()`, or never (`abort()`). Holds at most two parts in memory;
    a file smaller than a part goes up whole at `close()`.

    (pyarrow's S3 stream keeps 10 MB before its first part: a file of a million scores,
    8 MB, would go up only when closed, every run's file of a batch at once.) Not an
    io.RawIOBase on purpose: that one closes itself when collected, which here would
    complete an upload an error had left unfinished."""

    def __init__(self, key: str):
        self.closed = False
        self.bucket, self.key = key.split("/", 1)
        # Begun with the first full part: a fleet's files are mostly smaller than one, and
        # go up as one request (put_object) instead of three.
        self.upload_id: str | None = None
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
        if self.upload_id is None:
            self.upload_id = client().create_multipart_upload(Bucket=self.bucket, Key=self.key)[
                "UploadId"
            ]
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
        if self.upload_id is None:  # all of it fits in one part
            client().put_object(Bucket=self.bucket, Key=self.key, Body=bytes(self.buffer))
            self.buffer.clear()
            self.closed = True
            return
        if self.buffer:
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
        """Best effort: S3 drops the parts sent; a server that is down keeps them until the
        bucket's lifecycle rule (ensure_buckets) or its own clean-up aborts the upload."""
        wait(self.sent)
        if self.upload_id is not None:
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
