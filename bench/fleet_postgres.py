"""The fleet bench's slice as a PostgreSQL table, and the engine's read of it against
ADBC's `fetch_record_batch` of the same query.

The table lives in a database of its own beside DATABASE_URL's (FEATURES_DATABASE), kept
between runs: loading it is slow, and it is the same slice each time.
"""

import statistics
import time
from datetime import date
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import pyarrow as pa
import pyarrow.parquet as pq

FEATURES_DATABASE = "dropscore_bench_features"
TABLE = "fleet_features"


def features_url(database_url: str) -> str:
    """The features database on DATABASE_URL's server (made if missing)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(database_url, autocommit=True) as connection:
        exists = connection.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [FEATURES_DATABASE]
        ).fetchone()
        if not exists:
            connection.execute(
                sql.SQL("CREATE DATABASE {}").format(sql.Identifier(FEATURES_DATABASE))
            )
    return urlunparse(urlparse(database_url)._replace(path=f"/{FEATURES_DATABASE}", query=""))


def load_slice(url: str, slice_path: Path, day: date) -> None:
    """The Parquet slice as the table's rows of `day` (kept if it holds them already)."""
    import adbc_driver_postgresql.dbapi as adbc

    rows = pq.ParquetFile(slice_path).metadata.num_rows
    with adbc.connect(url) as connection, connection.cursor() as cursor:
        try:
            cursor.execute(f'SELECT count(*) FROM "{TABLE}" WHERE dt = $1', parameters=(day,))
            if cursor.fetchone()[0] == rows:
                return
        except adbc.Error:
            connection.rollback()
        print(f"loading the {rows:,}-row slice into PostgreSQL ...", flush=True)
        cursor.execute(f'DROP TABLE IF EXISTS "{TABLE}"')
        parquet = pq.ParquetFile(slice_path)
        schema = parquet.schema_arrow.append(pa.field("dt", pa.date32()))

        def with_date():
            for batch in parquet.iter_batches(batch_size=50_000):
                dates = pa.array([day] * batch.num_rows, pa.date32())
                yield pa.RecordBatch.from_arrays([*batch.columns, dates], schema=schema)

        cursor.adbc_ingest(
            TABLE, pa.RecordBatchReader.from_batches(schema, with_date()), mode="create"
        )
        connection.commit()


def adbc_table(url: str, columns: list[str], day: date) -> pa.Table:
    """The columns of the slice through ADBC's PostgreSQL driver, its fastest way: with a
    bound parameter the driver takes the whole result at once (not a streamed COPY), which
    the limit may do; 15-20% faster here, but 573 MB more memory for 100,000 x 200."""
    import adbc_driver_postgresql.dbapi as adbc

    names = ", ".join(f'"{c}"' for c in columns)
    with adbc.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute(f'SELECT {names} FROM "{TABLE}" WHERE dt = $1', parameters=(day,))
        return cursor.fetch_record_batch().read_all()


def same_query(source, columns: list[str], day: date) -> pa.Table:
    """ADBC's fetch_record_batch of the very query the source sends (a streamed COPY, as
    bench/source_bench.py reads it)."""
    with source.cursor() as cursor:
        cursor.execute(source.select(cursor, day, columns, None))
        return cursor.fetch_record_batch().read_all()


def compare_reads(
    source, url: str, columns: list[str], day: date, chunk_rows: int, rounds: int = 3
) -> dict:
    """Median seconds to read the same columns of the slice, the reads taking turns
    `rounds` times (one read of each swung by a third on this machine): the engine's
    source (its public `batches`), ADBC's fetch_record_batch of the same query, and of
    the query with a bound parameter (the limit's read)."""
    times: dict[str, list[float]] = {"source": [], "adbc": [], "adbc_bound": []}
    reads = {
        "source": lambda: sum(b.num_rows for b in source.batches(day, columns, chunk_rows)),
        "adbc": lambda: same_query(source, columns, day).num_rows,
        "adbc_bound": lambda: adbc_table(url, columns, day).num_rows,
    }
    for _ in range(rounds):
        counted = set()
        for name, read in reads.items():
            started = time.perf_counter()
            counted.add(read())
            times[name].append(time.perf_counter() - started)
        assert len(counted) == 1, counted
    return {
        **{name: statistics.median(seconds) for name, seconds in times.items()},
        "rows": counted.pop(),
        "columns": len(columns),
        "rounds": rounds,
    }
