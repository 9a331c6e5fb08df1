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
    """The columns of the slice through ADBC's PostgreSQL driver: Arrow straight from the
    server's binary COPY, no Python objects per row."""
    import adbc_driver_postgresql.dbapi as adbc

    names = ", ".join(f'"{c}"' for c in columns)
    with adbc.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute(f'SELECT {names} FROM "{TABLE}" WHERE dt = $1', parameters=(day,))
        return cursor.fetch_record_batch().read_all()


def compare_reads(
    source, url: str, columns: list[str], day: date, chunk_rows: int, rounds: int = 3
) -> dict:
    """Median seconds to read the same columns of the slice, the two reads taking turns
    `rounds` times (one read of each swung by a third on this machine): the engine's
    source (its public `batches`), and ADBC's fetch_record_batch."""
    engine, adbc = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        rows = sum(batch.num_rows for batch in source.batches(day, columns, chunk_rows))
        engine.append(time.perf_counter() - started)
        started = time.perf_counter()
        table = adbc_table(url, columns, day)
        adbc.append(time.perf_counter() - started)
        assert rows == table.num_rows, (rows, table.num_rows)
    return {
        "source": statistics.median(engine),
        "adbc": statistics.median(adbc),
        "rows": rows,
        "columns": len(columns),
        "rounds": rounds,
    }
