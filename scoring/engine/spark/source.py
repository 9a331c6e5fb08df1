"""A table as Spark knows it: a table name (`features.daily`, from the session's catalog: a
Hive metastore or Spark's own) or a path Spark reads as hive-partitioned Parquet
(`/data/features`, `hdfs://…`, `s3a://…` where the cluster has its connector). The feature
table with ENGINE=spark, and the labels (LABELS_URI) too.

The same questions as the Celery engine's sources (scoring.engine.features) — the slices
there are, the latest on or before a date, a slice's columns, its rows (the labels), a
sample for validation — and the slice itself as a DataFrame: only the union of the batch's
columns, only the slice's partition.

Which slices there are is asked of metadata only, never of a Spark job: the partitions the
metastore lists for a table, the `dt=` folders of a path. Tick asks it every minute for
the runs waiting for their slice (in whichever worker runs it: each holds a session), where
a query of the date column read every file's footer on each call.
"""

import contextlib
from dataclasses import dataclass
from datetime import date

import pyarrow as pa
from py4j.protocol import Py4JError
from pyspark.errors import AnalysisException, PySparkException
from pyspark.sql import DataFrame, functions

from scoring.engine.features import FeatureSourceError, NoSlice, encode_strings, joined, rechunk
from scoring.engine.spark import session


@contextlib.contextmanager
def spark_errors(what: str):
    """Spark's errors (and a JVM gone away) as FeatureSourceError, their first line only:
    the rest is the JVM's stack."""
    try:
        yield
    except (PySparkException, Py4JError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise FeatureSourceError(f"{what}: {first}") from exc


@dataclass
class SparkSource:
    name: str
    id_column: str = "entity_id"
    date_column: str = "dt"

    @property
    def is_path(self) -> bool:
        return "/" in self.name or ":" in self.name

    def frame(self) -> DataFrame:
        spark = session.get()
        with spark_errors(f"Spark cannot read the table {self.name}"):
            if self.is_path:
                return spark.read.parquet(self.name)
            # The session lives for many batches and keeps the files it listed for a table:
            # a slice another job rewrote since would be read from files that are gone.
            spark.catalog.refreshTable(self.name)
            return spark.read.table(self.name)

    def slice_frame(self, slice_date: date, columns: list[str]) -> DataFrame:
        """The slice's rows, its columns pruned to `columns` at the read."""
        frame = self.frame()
        day = functions.lit(slice_date.isoformat()).cast(frame.schema[self.date_column].dataType)
        return frame.where(functions.col(self.date_column) == day).select(*columns)

    def slices(self) -> list[date]:
        """The dates of the slices there are, from metadata: a path's `dt=` folders, the
        partitions of a table partitioned by the date. A view, or a table partitioned
        otherwise, is queried (a Spark job over its date column)."""
        with spark_errors(f"Spark cannot list the slices of {self.name}"):
            values = self.folder_values() if self.is_path else self.partition_values()
            if values is None:
                day = functions.col(self.date_column).cast("date")
                values = [row[0] for row in self.frame().select(day).distinct().collect()]
        return sorted({found for found in map(as_date, values) if found is not None})

    def folder_values(self) -> list[str]:
        """The values of the path's `dt=` folders, by one listing of the filesystem Spark
        reads it with (local, hdfs://, s3a://)."""
        spark = session.get()
        hadoop = spark._jvm.org.apache.hadoop.fs
        pattern = hadoop.Path(f"{self.name.rstrip('/')}/{self.date_column}=*")
        filesystem = pattern.getFileSystem(spark._jsc.hadoopConfiguration())
        statuses = filesystem.globStatus(pattern) or []
        prefix = f"{self.date_column}="
        return [
            status.getPath().getName().removeprefix(prefix)
            for status in statuses
            if status.isDirectory()
        ]

    def partition_values(self) -> list[str] | None:
        """The date of each partition the metastore lists (`dt=2026-12-05[/other=…]`);
        None when the table is not partitioned by the date, or is a view."""
        prefix = f"{self.date_column}="
        try:
            rows = session.get().sql(f"SHOW PARTITIONS {self.name}").collect()
        except AnalysisException:
            return None
        specs = [part for (spec,) in rows for part in spec.split("/")]
        if rows and not any(part.startswith(prefix) for part in specs):
            return None
        return [part.removeprefix(prefix) for part in specs if part.startswith(prefix)]

    def latest_slice(self, on_or_before: date) -> date:
        candidates = [found for found in self.slices() if found <= on_or_before]
        if not candidates:
            raise NoSlice(f"the table {self.name} has no slice on or before {on_or_before}")
        return candidates[-1]

    def columns(self, slice_date: date) -> list[str]:
        """The slice's columns. Spark reads a folder of slices with the schema of one file,
        a column missing from a slice coming back as nulls: so for a path, the slice's
        own files tell (a catalog table has one schema for all its slices)."""
        if not self.is_path:
            return self.frame().columns
        folder = f"{self.name.rstrip('/')}/{self.date_column}={slice_date.isoformat()}"
        with spark_errors(f"Spark cannot read the slice {folder}"):
            return [*session.get().read.parquet(folder).columns, self.date_column]

    def missing(self, slice_date: date, columns: list[str]) -> list[str]:
        available = set(self.columns(slice_date))
        return [c for c in columns if c not in available]

    def batches(
        self, slice_date: date, columns: list[str], batch_rows: int
    ) -> list[pa.RecordBatch]:
        """The slice's columns on the driver, in batches of batch_rows rows, strings as
        dictionaries: what the ground truth joins (a date's outcomes), not a feature slice,
        which the executors score where it lies."""
        with spark_errors(f"Spark cannot read the slice {slice_date} of {self.name}"):
            table = self.slice_frame(slice_date, columns).toArrow()
        return [encode_strings(batch) for batch in rechunk(table.to_batches(), batch_rows)]

    def sample(self, slice_date: date, columns: list[str], rows: int) -> pa.Table:
        with spark_errors(f"Spark cannot read the slice {slice_date} of {self.name}"):
            table = self.slice_frame(slice_date, columns).limit(rows).toArrow()
        if not table.num_rows:
            raise FeatureSourceError(f"the slice {slice_date} of {self.name} has no rows")
        return pa.Table.from_batches([encode_strings(joined(table.to_batches()))])


def as_date(value) -> date | None:
    """A slice's date from a partition value (text, or a date from a query); None for what
    is no date (Hive's __HIVE_DEFAULT_PARTITION__, a stray folder)."""
    if isinstance(value, date) or value is None:
        return value
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None
