"""A slice read once per batch from a source that ships every row per read (PostgreSQL).

The shards of a fleet's batch each read their columns of the slice. From Parquet that costs
little: each reads its columns' pages. From a database each read is a query that ships
and decodes every row: 2.5 s for 100,000 rows x 200 columns against 0.1 s from Parquet,
once per shard. So the plan gives each part of the rows a copy (a SliceCopy): the first
unit to start on the part reads every shard's columns from the source, scores its own,
and keeps the rows as Parquet on S3 (`slices/batch-B/...` in SCORES_BUCKET, outside the
scores table) as it goes; the units after it read the copy. A unit that starts while
the copy is still being written reads the source itself: nobody waits for a copy.

The copy only saves reads: when keeping it fails (S3 refuses it), its unit goes on with
the rows it read and the others read the source. The copies go when the batch closes,
and maintenance removes those of batches a dead worker left open (`sweep`).
"""

import logging
from collections.abc import Iterator
from datetime import date

import pyarrow as pa
import pyarrow.parquet as pq
from botocore.exceptions import BotoCoreError, ClientError
from django import db
from django.conf import settings

from scoring.engine import features
from scoring.engine.chunk_scoring import union
from scoring.engine.part_upload import PartUpload
from scoring.models import Batch, BatchPart, ScoringRun, SliceCopy
from scoring.packages import storage

FOLDER = "slices"
log = logging.getLogger(__name__)


def plan(source, shards: list[list[ScoringRun]], row_parts: list) -> None:
    """A copy for each part of the rows when several shards read them from a remote source."""
    if not source.remote or len(shards) < 2:
        return
    first = shards[0][0]
    columns = [
        source.id_column,
        *union(run.version.package["features"] for shard in shards for run in shard),
    ]
    SliceCopy.objects.bulk_create(
        SliceCopy(batch_id=first.batch_id, date=first.date, index=index, columns=columns)
        for index in range(len(row_parts))
    )


def source_for(source, part: BatchPart):
    """The unit's source: the copy of its rows if one is ready; the source, keeping the
    copy, if this unit is the first to start on them; else the source alone."""
    if not source.remote:  # no copy is planned for it: no query either
        return source
    copy = SliceCopy.objects.filter(batch_id=part.batch_id, date=part.date, index=part.index)
    copy = copy.first()
    if copy is None:
        return source
    if copy.status == SliceCopy.Status.READY:
        return Copied(copy, source.id_column)
    claimed = SliceCopy.objects.filter(id=copy.id, status=SliceCopy.Status.PLANNED).update(
        status=SliceCopy.Status.WRITING
    )
    return Keeping(source, copy) if claimed else source


def location(copy: SliceCopy) -> str:
    return (
        f"{settings.SCORES_BUCKET}/{FOLDER}/batch-{copy.batch_id}/"
        f"date-{copy.date.isoformat()}/part-{copy.index}"
    )


class Copied:
    """The copy of a part of the slice, read as Parquet: only the unit's columns."""

    def __init__(self, copy: SliceCopy, id_column: str):
        self.id_column = id_column
        self.parquet = features.ParquetSource(
            f"s3://{location(copy)}",
            id_column=id_column,
            date_column="dt",
            s3_options=storage.arrow_filesystem_options(),
        )

    def batches(
        self, slice_date: date, columns: list[str], batch_rows: int, part: dict | None = None
    ) -> Iterator[pa.RecordBatch]:
        return self.parquet.batches(slice_date, columns, batch_rows)  # it holds the part alone


class Keeping:
    """The source, read for every shard's columns: the unit gets its own, the copy all."""

    def __init__(self, source, copy: SliceCopy):
        self.source = source
        self.copy = copy
        self.id_column = source.id_column

    def batches(
        self, slice_date: date, columns: list[str], batch_rows: int, part: dict | None = None
    ) -> Iterator[pa.RecordBatch]:
        copy = CopyWriter(f"{location(self.copy)}/dt={slice_date.isoformat()}/rows.parquet")
        kept = False
        try:
            for batch in self.source.batches(slice_date, self.copy.columns, batch_rows, part=part):
                yield batch.select(columns)
                # Written while the sandboxes score the rows: this runs in the reading thread.
                copy.write(batch)
            kept = copy.finish()
        finally:
            if not kept:
                copy.abort()
            SliceCopy.objects.filter(id=self.copy.id).update(
                status=SliceCopy.Status.READY if kept else SliceCopy.Status.FAILED
            )
            db.connection.close()  # the reading thread's own, which ends with it


class CopyWriter:
    """The copy as one Parquet file streamed to S3. A failure to keep it is logged, never
    raised: the unit's own rows are read already."""

    def __init__(self, key: str):
        self.key = key
        self.upload: PartUpload | None = None
        self.writer: pq.ParquetWriter | None = None
        self.failed = False

    def write(self, batch: pa.RecordBatch) -> None:
        if self.failed:
            return
        try:
            if self.writer is None:
                self.upload = PartUpload(self.key)
                self.writer = pq.ParquetWriter(self.upload, batch.schema, compression="lz4")
            self.writer.write_batch(batch)
        except Exception as exc:
            self.fail(exc)

    def finish(self) -> bool:
        """True once the copy is on S3 whole."""
        if self.failed or self.writer is None:  # nothing read: the others read the source
            return False
        try:
            self.writer.close()
            self.upload.close()
        except Exception as exc:
            self.fail(exc)
            return False
        return True

    def fail(self, exc: Exception) -> None:
        log.warning(
            "keeping the copy %s failed, the other units read the source: %s", self.key, exc
        )
        self.failed = True

    def abort(self) -> None:
        if self.upload is not None:
            self.upload.abort()


def discard(batch_id: int) -> None:
    """The batch's copies, once it is closed (best effort: `sweep` finds what is left)."""
    try:
        remove(f"{FOLDER}/batch-{batch_id}/")
    except (BotoCoreError, ClientError) as exc:
        log.warning("the slice copies of batch %s are left to maintenance: %s", batch_id, exc)


def sweep() -> int:
    """Remove the copies of closed or deleted batches; how many batches' copies went."""
    pages = storage.client().get_paginator("list_objects_v2")
    listed = pages.paginate(Bucket=settings.SCORES_BUCKET, Prefix=f"{FOLDER}/", Delimiter="/")
    kept = [p["Prefix"] for page in listed for p in page.get("CommonPrefixes", [])]
    open_ = {
        f"{FOLDER}/batch-{batch_id}/"
        for batch_id in Batch.objects.filter(finished_at__isnull=True).values_list("id", flat=True)
    }
    stale = [prefix for prefix in kept if prefix not in open_]
    for prefix in stale:
        remove(prefix)
    return len(stale)


def remove(prefix: str) -> None:
    """Every object under the prefix (boto3: pyarrow's delete_dir leaves a marker of the
    parent folder behind)."""
    client = storage.client()
    pages = client.get_paginator("list_objects_v2")
    for page in pages.paginate(Bucket=settings.SCORES_BUCKET, Prefix=prefix):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(
                Bucket=settings.SCORES_BUCKET, Delete={"Objects": keys, "Quiet": True}
            )
