"""What the benches compare the engine with. Both write what the batch writes: each model's
scores, once, as Parquet on the same S3 server the engine writes to (outside its table).

- the physical limit, in one warm process: one projected read of the union columns, each
  model's raw predict on that frame, each model's scores written;
- the notebook loop, in one process: for each model, a read of its own columns, its
  predict, its scores written.

Models are loaded beforehand in both: loading is not part of either.
"""

import resource
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


@dataclass
class Loaded:
    """A model ready to score: its name (the file its scores go to), model and features."""

    name: str
    model: object
    features: list[str]


@dataclass
class Limit:
    read: float
    predict: float
    write: float
    cpu: float  # CPU seconds of the bench's process for all three
    kernel_cpu: float  # of which in the kernel

    @property
    def seconds(self) -> float:
        return self.read + self.predict + self.write


class ScoreFiles:
    """Where a baseline writes each model's scores: <prefix>/<name>.parquet on S3."""

    def __init__(self, filesystem, prefix: str):
        self.filesystem, self.prefix = filesystem, prefix

    @classmethod
    def beside_the_scores(cls, folder: str) -> "ScoreFiles":
        """s3://SCORES_BUCKET/<folder>/: the engine's S3 server and bucket, not its table."""
        from django.conf import settings

        from scoring.packages import storage

        return cls(storage.arrow_filesystem(), f"{settings.SCORES_BUCKET}/{folder}")

    def write(self, name: str, entity_ids, scores: np.ndarray) -> None:
        table = pa.table({"entity_id": entity_ids, "score": np.asarray(scores, dtype="float64")})
        pq.write_table(
            table, f"{self.prefix}/{name}.parquet", filesystem=self.filesystem, compression="snappy"
        )


def raw_predict(model: object, frame) -> np.ndarray:
    """The model's scores with nothing around them: the positive class's probability."""
    if hasattr(model, "predict_proba"):
        return model.predict_proba(frame)[:, -1]
    if hasattr(model, "predict"):
        return model.predict(frame)
    return np.asarray(model(frame))


def parquet_reader(path):
    """A notebook's read of some columns of a Parquet file."""
    import pandas as pd

    return lambda columns: pd.read_parquet(path, columns=columns)


def sql_reader(connection, table: str, date_column: str, day):
    """A notebook's read of some columns of a slice of a PostgreSQL table (pandas.read_sql
    on a DB-API connection, as with psycopg or SQLAlchemy: rows come as Python tuples)."""
    import warnings

    import pandas as pd
    from psycopg import sql

    def read(columns: list[str]):
        query = sql.SQL("SELECT {} FROM {} WHERE {} = %s").format(
            sql.SQL(", ").join(sql.Identifier(c) for c in columns),
            sql.Identifier(table),
            sql.Identifier(date_column),
        )
        with warnings.catch_warnings():  # pandas prefers SQLAlchemy; a plain connection works
            warnings.simplefilter("ignore", UserWarning)
            return pd.read_sql(query.as_string(connection), connection, params=[day])

    return read


def cpu_seconds() -> np.ndarray:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return np.array([usage.ru_utime + usage.ru_stime, usage.ru_stime])


def physical_limit(read_union: Callable, id_column: str, models: list[Loaded], out) -> Limit:
    """`read_union()` gives the union columns (and the ids) as one frame, categorical
    columns as pandas `category`; then each model predicts on it and its scores are written."""
    cpu_before = cpu_seconds()
    started = time.perf_counter()
    frame = read_union()
    read = time.perf_counter() - started
    predict = write = 0.0
    for loaded in models:
        started = time.perf_counter()
        scores = raw_predict(loaded.model, frame[loaded.features])
        written = time.perf_counter()
        out.write(loaded.name, frame[id_column].to_numpy(), scores)
        predict += written - started
        write += time.perf_counter() - written
    return Limit(read, predict, write, *(cpu_seconds() - cpu_before))


def notebook_loop(read_own: Callable, id_column: str, models: list[Loaded], out) -> float:
    """`read_own(columns)` reads those columns as a notebook does (pandas.read_parquet,
    pandas.read_sql); each model reads its own, predicts and writes its scores."""
    started = time.perf_counter()
    for loaded in models:
        frame = read_own([id_column, *loaded.features])
        scores = raw_predict(loaded.model, frame[loaded.features])
        out.write(loaded.name, frame[id_column].to_numpy(), scores)
    return time.perf_counter() - started
