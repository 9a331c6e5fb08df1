"""The PostgreSQL feature source against ADBC's own read of the same query.

Loads a slice of ROWS rows x 117 columns (the id, 111 float8 columns with 5% NULLs and
5 text columns) into a table of its own in PostgreSQL (dropped at the end), then reads
it `--repeat` times three ways, in turns, and prints the medians and the median of each
round's ratio:

- the source: `PostgresSource.batches` in chunks of `--chunk-rows` rows, strings as
  Arrow dictionaries (what the engine reads);
- the limit: ADBC's `fetch_record_batch` of the very query the source sends, each
  batch taken as the driver gives it;
- the naive way: the source as it was, rows as Python tuples from psycopg's server-side
  cursor turned into Arrow arrays.

Target: source / ADBC <= 1.2. The machine is shared: read the ratios, measured
side by side, rather than the seconds; the CPU this process spent (the driver decodes
in it, the server's COPY is the same for the source and ADBC) varies less than the
wall time when other work competes for the cores.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/bench .venv/bin/python bench/source_bench.py
    .venv/bin/python bench/source_bench.py --rows 1000000 --uri postgresql://...
"""

import argparse
import os
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import adbc_driver_postgresql.dbapi as adbc
import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import verdict  # noqa: E402
from scoring.engine.features import PostgresSource  # noqa: E402

DAY = date(2026, 11, 20)
NUMERIC, STRINGS = 111, 5
TARGET = 1.2


def slice_table(rows: int) -> pa.Table:
    rng = np.random.default_rng(0)
    columns = {
        "entity_id": pa.array(np.arange(rows, dtype="int64")),
        "dt": pa.array([DAY] * rows, pa.date32()),
    }
    for n in range(NUMERIC):
        columns[f"f{n:03d}"] = pa.array(rng.normal(size=rows), mask=rng.random(rows) < 0.05)
    for n in range(STRINGS):
        values = ["north", "south", "east", "west", "prepaid", "postpaid", f"other-{n}"]
        columns[f"s{n}"] = pa.array(rng.choice(values, rows))
    return pa.table(columns)


def load(uri: str, table: str, rows: int) -> None:
    with adbc.connect(uri) as connection, connection.cursor() as cursor:
        cursor.adbc_ingest(table, slice_table(rows), mode="create")
        connection.commit()


def drop(uri: str, table: str) -> None:
    with adbc.connect(uri) as connection, connection.cursor() as cursor:
        cursor.execute(f'DROP TABLE IF EXISTS "{table}"')
        connection.commit()


def read_adbc(dsn: str, query: str) -> int:
    """The limit: the driver's own batches of the query."""
    with adbc.connect(dsn) as connection, connection.cursor() as cursor:
        cursor.execute(query)
        return sum(b.num_rows for b in cursor.fetch_record_batch())


def read_naive(source: PostgresSource, columns: list[str], chunk_rows: int) -> int:
    """The tuple path the source had before ADBC, kept here only to measure it."""
    import psycopg
    from psycopg import sql

    def column_array(values: tuple) -> pa.Array:
        array = pa.array(values)
        if pa.types.is_decimal(array.type):
            return array.cast(pa.float64())
        if pa.types.is_string(array.type):
            return array.dictionary_encode()
        return array

    query = sql.SQL("SELECT {} FROM {} WHERE {} = %s").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        source.table,
        sql.Identifier(source.date_column),
    )
    read = 0
    with (
        psycopg.connect(source.dsn_and_table[0]) as connection,
        connection.cursor(name="dropscore_features") as cursor,
    ):
        cursor.itersize = chunk_rows
        cursor.execute(query, [DAY])
        while rows := cursor.fetchmany(chunk_rows):
            arrays = [column_array(values) for values in zip(*rows, strict=True)]
            read += pa.RecordBatch.from_arrays(arrays, names=columns).num_rows
    return read


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--uri",
        default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="a PostgreSQL database where the bench may create and drop a table",
    )
    args = parser.parse_args()
    table = f"source_bench_{os.getpid()}"
    chunk_rows = args.chunk_rows
    columns = ["entity_id", *(f"f{n:03d}" for n in range(NUMERIC))]
    columns += [f"s{n}" for n in range(STRINGS)]
    print(f"PostgreSQL feature source: {args.rows:,} rows x {len(columns)} columns")
    started = time.perf_counter()
    load(args.uri, table, args.rows)
    print(f"  loaded in {time.perf_counter() - started:.1f} s")
    try:
        source = PostgresSource(f"{args.uri}?table={table}")
        with source.cursor() as cursor:  # the very query the source sends
            query = source.select(cursor, DAY, columns, None)
        ways = {
            "source": lambda: sum(b.num_rows for b in source.batches(DAY, columns, chunk_rows)),
            "adbc": lambda: read_adbc(args.uri, query),
            "naive": lambda: read_naive(source, columns, chunk_rows),
        }
        times = {way: [] for way in ways}
        cpu = {way: [] for way in ways}
        for round_ in range(args.repeat):
            # Turns alternate (source first, then ADBC first) so a drift of the machine's
            # speed weighs on both alike.
            order = ["source", "adbc"] if round_ % 2 == 0 else ["adbc", "source"]
            for way in [*order, "naive"]:
                started, cpu_before = time.perf_counter(), time.process_time()
                rows = ways[way]()
                times[way].append(time.perf_counter() - started)
                cpu[way].append(time.process_time() - cpu_before)
                if rows != args.rows:
                    return verdict([f"{way} read {rows:,} rows of {args.rows:,}"])
    finally:
        drop(args.uri, table)
    for way, seconds in times.items():
        runs = ", ".join(f"{s:.2f}" for s in seconds)
        print(
            f"  {way:<7} median {statistics.median(seconds):.2f} s  ({runs});"
            f" this process's CPU {statistics.median(cpu[way]):.2f} s"
        )
    ratios = [s / a for s, a in zip(times["source"], times["adbc"], strict=True)]
    naive = [n / s for n, s in zip(times["naive"], times["source"], strict=True)]
    ratio = statistics.median(ratios)
    print(
        f"  source / ADBC fetch_record_batch: {ratio:.2f}x, median of the rounds'"
        f" ({', '.join(f'{r:.2f}' for r in ratios)}); target <= {TARGET}x"
    )
    print(f"  naive / source: {statistics.median(naive):.2f}x")
    cpu_ratio = statistics.median(cpu["source"]) / statistics.median(cpu["adbc"])
    print(f"  this process's CPU, source / ADBC: {cpu_ratio:.2f}x")
    return verdict([f"source / ADBC {ratio:.2f}x > {TARGET}x"] if ratio > TARGET else [])


if __name__ == "__main__":
    sys.exit(main())
