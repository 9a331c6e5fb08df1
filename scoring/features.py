"""Feature sources -> Arrow record batches.

`FEATURES_URI` names a Parquet dataset hive-partitioned by the date column
(`<root>/dt=YYYY-MM-DD/*.parquet`), on local disk or `s3://bucket/prefix`.
Only the needed columns are read, row group by row group.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from functools import cached_property

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs


class FeatureSourceError(Exception):
    pass


@dataclass
class ParquetSource:
    uri: str
    id_column: str = "entity_id"
    date_column: str = "dt"
    s3_options: dict | None = None

    @cached_property
    def filesystem_and_root(self) -> tuple[fs.FileSystem, str]:
        if self.uri.startswith("s3://"):
            return fs.S3FileSystem(**(self.s3_options or {})), self.uri.removeprefix(
                "s3://"
            ).rstrip("/")
        return fs.LocalFileSystem(), self.uri.rstrip("/")

    def slices(self) -> list[date]:
        filesystem, root = self.filesystem_and_root
        prefix = f"{self.date_column}="
        try:
            entries = filesystem.get_file_info(fs.FileSelector(root, allow_not_found=True))
        except OSError as exc:
            raise FeatureSourceError(f"cannot list the feature source {self.uri}: {exc}") from exc
        found = []
        for entry in entries:
            if entry.type == fs.FileType.Directory and entry.base_name.startswith(prefix):
                try:
                    found.append(date.fromisoformat(entry.base_name.removeprefix(prefix)))
                except ValueError:
                    continue
        return sorted(found)

    def latest_slice(self, on_or_before: date) -> date:
        candidates = [d for d in self.slices() if d <= on_or_before]
        if not candidates:
            raise FeatureSourceError(
                f"the feature source {self.uri} has no slice on or before {on_or_before}"
            )
        return candidates[-1]

    def files(self, slice_date: date) -> list[str]:
        filesystem, root = self.filesystem_and_root
        folder = f"{root}/{self.date_column}={slice_date.isoformat()}"
        entries = filesystem.get_file_info(fs.FileSelector(folder, recursive=True))
        return sorted(
            e.path for e in entries if e.type == fs.FileType.File and e.path.endswith(".parquet")
        )

    def columns(self, slice_date: date) -> list[str]:
        filesystem, _ = self.filesystem_and_root
        files = self.files(slice_date)
        if not files:
            return []
        return pq.read_schema(files[0], filesystem=filesystem).names

    def missing(self, slice_date: date, columns: list[str]) -> list[str]:
        available = set(self.columns(slice_date))
        return [c for c in columns if c not in available]

    def batches(
        self, slice_date: date, columns: list[str], batch_rows: int
    ) -> Iterator[pa.RecordBatch]:
        """Stream the slice's projected columns in batches of at most batch_rows."""
        filesystem, _ = self.filesystem_and_root
        for path in self.files(slice_date):
            with filesystem.open_input_file(path) as handle:
                parquet = pq.ParquetFile(handle)
                yield from parquet.iter_batches(batch_size=batch_rows, columns=columns)

    def sample(self, slice_date: date, columns: list[str], rows: int) -> pa.Table:
        for batch in self.batches(slice_date, columns, rows):
            return pa.Table.from_batches([batch])
        raise FeatureSourceError(f"the slice {slice_date} of {self.uri} has no rows")


def source_from_settings():
    """The configured feature source, or None when FEATURES_URI is blank."""
    from django.conf import settings

    if not settings.FEATURES_URI:
        return None
    s3_options = {
        "endpoint_override": settings.S3_ENDPOINT_URL.split("://", 1)[-1],
        "access_key": settings.S3_ACCESS_KEY,
        "secret_key": settings.S3_SECRET_KEY,
        "region": settings.S3_REGION,
        "scheme": "https" if settings.S3_ENDPOINT_URL.startswith("https") else "http",
    }
    return ParquetSource(
        settings.FEATURES_URI,
        id_column=settings.FEATURES_ID_COLUMN,
        date_column=settings.FEATURES_DATE_COLUMN,
        s3_options=s3_options,
    )
