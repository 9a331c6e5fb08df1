"""The feature table as Spark knows it: a table name (`features.daily`, from the session's
catalog) or a path Spark reads as hive-partitioned Parquet (`/data/features`,
`hdfs://…`, `s3a://…` where the cluster has its connector).

The same questions as the Celery engine's sources (scoring.engine.features) — the latest
slice on or before a date, its columns, a sample for validation — and the slice itself
as a DataFrame: only the union of the batch's columns, only the slice's partition.
"""

from dataclasses import dataclass
from datetime import date

import pyarrow as pa
from pyspark.errors import PySparkException
from pyspark.sql import DataFrame, functions

from scoring.engine.features import FeatureSourceError, NoSlice, encode_strings, joined
from scoring.engine.spark import session


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
        try:
            if self.is_path:
                return spark.read.parquet(self.name)
            return spark.read.table(self.name)
        except PySparkException as exc:
            raise FeatureSourceError(
                f"Spark cannot read the feature table {self.name}: {exc}"
            ) from exc

    def slice_frame(self, slice_date: date, columns: list[str]) -> DataFrame:
        """The slice's rows, its columns pruned to `columns` at the read."""
        frame = self.frame()
        day = functions.lit(slice_date.isoformat()).cast(frame.schema[self.date_column].dataType)
        return frame.where(functions.col(self.date_column) == day).select(*columns)

    def latest_slice(self, on_or_before: date) -> date:
        frame = self.frame()
        day = functions.col(self.date_column).cast("date")
        try:
            found = (
                frame.where(day <= functions.lit(on_or_before)).agg(functions.max(day)).first()[0]
            )
        except PySparkException as exc:
            raise FeatureSourceError(
                f"Spark cannot read the feature table {self.name}: {exc}"
            ) from exc
        if found is None:
            raise NoSlice(f"the feature table {self.name} has no slice on or before {on_or_before}")
        return found

    def columns(self, slice_date: date) -> list[str]:
        """The slice's columns. Spark reads a folder of slices with the schema of one file,
        a column missing from a slice coming back as nulls: so for a path, the slice's
        own files tell (a catalog table has one schema for all its slices)."""
        if not self.is_path:
            return self.frame().columns
        folder = f"{self.name.rstrip('/')}/{self.date_column}={slice_date.isoformat()}"
        try:
            return [*session.get().read.parquet(folder).columns, self.date_column]
        except PySparkException as exc:
            raise FeatureSourceError(f"Spark cannot read the slice {folder}: {exc}") from exc

    def missing(self, slice_date: date, columns: list[str]) -> list[str]:
        available = set(self.columns(slice_date))
        return [c for c in columns if c not in available]

    def sample(self, slice_date: date, columns: list[str], rows: int) -> pa.Table:
        table = self.slice_frame(slice_date, columns).limit(rows).toArrow()
        if not table.num_rows:
            raise FeatureSourceError(f"the slice {slice_date} of {self.name} has no rows")
        return pa.Table.from_batches([encode_strings(joined(table.to_batches()))])
