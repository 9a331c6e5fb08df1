"""Feature sources against real backends: Parquet on disk, Parquet on SeaweedFS S3, PostgreSQL."""

import io
import json
import uuid
from collections import Counter
from datetime import date

import boto3
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.conf import settings

from deploy.services import free_port
from scoring.engine.features import (
    FeatureSourceError,
    ParquetSource,
    PostgresSource,
    rechunk,
    source_from_settings,
)
from tests.factories import features
from tests.flows import postgres_uri

BUCKET = "features-test"
COLUMNS = ["entity_id", "age", "monthly_spend", "region"]
SLICES = {date(2026, 11, 18): 7, date(2026, 11, 20): 25, date(2026, 11, 23): 10}
FIRST, MIDDLE, LAST = SLICES


def frame(day: date, rows: int | None = None) -> pd.DataFrame:
    return features.feature_frame(SLICES[day] if rows is None else rows, seed=day.toordinal())


def s3_options() -> dict:
    return {
        "endpoint_override": settings.S3_ENDPOINT_URL.split("://", 1)[-1],
        "access_key": settings.S3_ACCESS_KEY,
        "secret_key": settings.S3_SECRET_KEY,
        "region": settings.S3_REGION,
        "scheme": "http",
    }


def parquet_bytes(data: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    data.to_parquet(buffer, index=False)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def s3(s3_server):
    client = boto3.client(
        "s3",
        endpoint_url=s3_server.url,
        aws_access_key_id=settings.S3_ACCESS_KEY,
        aws_secret_access_key=settings.S3_SECRET_KEY,
        region_name=settings.S3_REGION,
    )
    if BUCKET not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture(scope="module")
def local_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    for day in SLICES:
        (root / f"dt={day}").mkdir()
        (root / f"dt={day}" / "part-0.parquet").write_bytes(parquet_bytes(frame(day)))
    return root


@pytest.fixture(scope="module")
def s3_root(s3):
    for day in SLICES:
        key = f"churn/dt={day}/part-0.parquet"
        s3.put_object(Bucket=BUCKET, Key=key, Body=parquet_bytes(frame(day)))
    return f"s3://{BUCKET}/churn"


@pytest.fixture
def postgres_table():
    from django.db import connection

    uri = postgres_uri("features_test")
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE features_test (entity_id bigint, dt date, age double precision,"
            " monthly_spend double precision, region text)"
        )
        for day in SLICES:
            rows = frame(day)[COLUMNS].itertuples(index=False)
            cursor.executemany(
                "INSERT INTO features_test VALUES (%s, %s, %s, %s, %s)",
                [(int(e), day, float(a), float(m), str(r)) for e, a, m, r in rows],
            )
    yield uri
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE features_test")


@pytest.fixture(
    params=["local", "s3", pytest.param("postgres", marks=pytest.mark.django_db(transaction=True))]
)
def source(request):
    if request.param == "local":
        return ParquetSource(str(request.getfixturevalue("local_root")))
    if request.param == "s3":
        return ParquetSource(request.getfixturevalue("s3_root"), s3_options=s3_options())
    return PostgresSource(request.getfixturevalue("postgres_table"))


def read_all(source, day: date, columns: list[str], batch_rows: int) -> list[pa.RecordBatch]:
    return list(source.batches(day, columns, batch_rows))


# --- slices -------------------------------------------------------------------


def test_it_lists_the_slices_in_order(source):
    assert source.slices() == [FIRST, MIDDLE, LAST]


@pytest.mark.parametrize(
    "on_or_before, expected",
    [
        (MIDDLE, MIDDLE),
        (date(2026, 11, 21), MIDDLE),
        (date(2026, 11, 19), FIRST),
        (date(2027, 1, 1), LAST),
    ],
)
def test_it_picks_the_latest_slice_on_or_before_a_date(source, on_or_before, expected):
    assert source.latest_slice(on_or_before) == expected


def test_it_refuses_a_date_before_the_first_slice(source):
    with pytest.raises(FeatureSourceError, match="no slice on or before 2026-11-17"):
        source.latest_slice(date(2026, 11, 17))


# --- columns ------------------------------------------------------------------


def test_it_reports_the_columns_and_names_exactly_the_missing_ones(source):
    assert set(COLUMNS) <= set(source.columns(MIDDLE))
    assert source.missing(MIDDLE, COLUMNS) == []
    assert source.missing(MIDDLE, ["age", "income", "region", "zip"]) == ["income", "zip"]


# --- batches and samples ------------------------------------------------------


def test_it_streams_the_projected_columns_in_small_batches(source):
    columns = ["region", "monthly_spend", "entity_id", "age"]
    batches = read_all(source, MIDDLE, columns, batch_rows=4)

    assert len(batches) >= SLICES[MIDDLE] // 4
    assert all(0 < batch.num_rows <= 4 for batch in batches)
    assert all(batch.schema.names == columns for batch in batches)


def test_it_returns_exactly_the_rows_of_the_slice(source):
    batches = read_all(source, MIDDLE, COLUMNS, batch_rows=4)
    got = pa.Table.from_batches(batches).to_pandas().sort_values("entity_id", ignore_index=True)
    expected = frame(MIDDLE)[COLUMNS]

    assert got["entity_id"].tolist() == list(range(SLICES[MIDDLE]))
    assert got["age"].tolist() == expected["age"].tolist()
    assert got["monthly_spend"].tolist() == expected["monthly_spend"].tolist()
    assert got["region"].astype(str).tolist() == expected["region"].astype(str).tolist()


def test_it_gives_strings_as_dictionaries_and_numbers_as_floats(source):
    batch = read_all(source, LAST, COLUMNS, batch_rows=100)[0]

    assert pa.types.is_dictionary(batch.schema.field("region").type)
    assert batch.schema.field("age").type == pa.float64()
    assert batch.schema.field("monthly_spend").type == pa.float64()
    assert isinstance(batch.to_pandas()["region"].dtype, pd.CategoricalDtype)


def test_it_samples_at_most_the_rows_asked_for(source):
    sample = source.sample(MIDDLE, ["age", "region"], rows=5)

    assert 0 < sample.num_rows <= 5
    assert sample.column_names == ["age", "region"]


# --- Parquet layout -----------------------------------------------------------


@pytest.mark.parametrize("where", ["local", "s3"])
def test_it_reads_a_slice_split_over_several_files_whole(where, request):
    day = date(2026, 12, 1)
    parts = [frame(MIDDLE, rows=9), frame(LAST, rows=6)]
    parts[1]["entity_id"] += 100
    if where == "local":
        root = request.getfixturevalue("tmp_path")
        (root / f"dt={day}").mkdir()
        for n, part in enumerate(parts):
            (root / f"dt={day}" / f"part-{n}.parquet").write_bytes(parquet_bytes(part))
        source = ParquetSource(str(root))
    else:
        s3 = request.getfixturevalue("s3")
        for n, part in enumerate(parts):
            s3.put_object(
                Bucket=BUCKET, Key=f"split/dt={day}/part-{n}.parquet", Body=parquet_bytes(part)
            )
        source = ParquetSource(f"s3://{BUCKET}/split", s3_options=s3_options())

    got = pa.Table.from_batches(read_all(source, day, ["entity_id", "age"], batch_rows=4))

    assert sorted(got["entity_id"].to_pylist()) == list(range(9)) + list(range(100, 106))
    assert sorted(got["age"].to_pylist()) == sorted(pd.concat(parts)["age"].tolist())


def test_it_gives_plain_string_parquet_columns_as_dictionaries(tmp_path):
    day = date(2026, 12, 1)
    data = frame(MIDDLE).assign(region=lambda f: f["region"].astype(str))
    (tmp_path / f"dt={day}").mkdir()
    (tmp_path / f"dt={day}" / "part-0.parquet").write_bytes(parquet_bytes(data))

    batch = read_all(ParquetSource(str(tmp_path)), day, ["region"], batch_rows=100)[0]

    assert pa.types.is_dictionary(batch.schema.field("region").type)


# --- PostgreSQL against Parquet, types and parts --------------------------------

TYPED = pa.table(
    {
        "entity_id": pa.array([5, 1, 4, 2, 3], pa.int64()),
        "visits": pa.array([3, None, 0, -7, 12], pa.int32()),
        "balance": pa.array([1.5, None, -0.25, 1e12, None], pa.float64()),
        "amount": pa.array([12.34, 0.1, None, -5.0, 99999.99], pa.float64()),
        "plan": pa.array(["basic", None, "plus", "o'hara", "basic"], pa.string()),
        "opened": pa.array(
            [date(2020, 1, 31), None, date(1999, 12, 31), date(2026, 2, 28), date(2026, 11, 20)],
            pa.date32(),
        ),
    }
)
TYPED_SQL = (
    "entity_id bigint, dt date, visits integer, balance double precision,"
    " amount numeric(12, 2), plan text, opened date"
)


@pytest.fixture
def create_table():
    """Makes tables of the test database, each as a feature source URI; drops them after."""
    from django.db import connection

    made = []

    def create(name: str, columns_sql: str, rows: list[tuple]) -> str:
        uri = postgres_uri(name)
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE TABLE {name} ({columns_sql})")
            made.append(name)
            marks = ", ".join(["%s"] * len(rows[0]))
            cursor.executemany(f"INSERT INTO {name} VALUES ({marks})", rows)
        return uri

    yield create
    with connection.cursor() as cursor:
        for name in made:
            cursor.execute(f"DROP TABLE {name}")


def typed_rows(day: date) -> list[tuple]:
    return [(row.pop("entity_id"), day, *row.values()) for row in TYPED.to_pylist()]


def by_id(table: pa.Table) -> pa.Table:
    return table.sort_by("entity_id")


@pytest.mark.django_db(transaction=True)
def test_postgres_gives_the_same_types_and_values_as_parquet_of_the_same_data(
    tmp_path, create_table
):
    (tmp_path / f"dt={MIDDLE}").mkdir()
    pq.write_table(TYPED, tmp_path / f"dt={MIDDLE}" / "part-0.parquet")
    rows = typed_rows(MIDDLE) + [(r[0] + 100, LAST, *r[2:]) for r in typed_rows(LAST)]
    postgres = PostgresSource(create_table("typed", TYPED_SQL, rows))
    columns = TYPED.column_names

    got = by_id(pa.Table.from_batches(read_all(postgres, MIDDLE, columns, batch_rows=2)))
    expected = by_id(
        pa.Table.from_batches(read_all(ParquetSource(str(tmp_path)), MIDDLE, columns, 2))
    )

    assert got.schema == expected.schema
    assert pa.types.is_dictionary(got.schema.field("plan").type)
    assert got.schema.field("amount").type == pa.float64()  # numeric, as models take it
    assert got.to_pylist() == expected.to_pylist() == by_id(TYPED).to_pylist()


def ids_read(source, day: date, parts: list[dict]) -> list[Counter]:
    return [
        Counter(pa.Table.from_batches(read_all_part(source, day, part))["entity_id"].to_pylist())
        for part in parts
    ]


def read_all_part(source, day: date, part: dict) -> list[pa.RecordBatch]:
    return list(source.batches(day, ["entity_id", "age"], 3, part=part))


# Ties at the boundaries (a run of equal ids longer than a part), NULL ids, strings that
# sort differently by bytes and by collation, with a quote; uuids come back as text.
INT_IDS = [7, 1, 1, 1, 1, 1, 2, 3, 3, 9, None, 4, None, 5, 6, 8, 8, 8, 10, 11]
STRING_IDS = ["b", "a", "A", "o'hara", None, "Zeta", "zeta", "ähm", "10", "9"]
STRING_IDS += ["b", "b", "b", "x y", "", "a"]
UUID_IDS = [str(uuid.UUID(int=n * 7919 % 23)) for n in range(20)] + [None]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "kind, ids", [("bigint", INT_IDS), ("text", STRING_IDS), ("uuid", UUID_IDS)]
)
def test_postgres_parts_cover_every_row_of_the_slice_exactly_once(kind, ids, create_table):
    rows = [(i, MIDDLE, float(n)) for n, i in enumerate(ids)]
    rows += [(i, LAST, 0.0) for i in ids[:5]]  # another slice: never in a part
    source = PostgresSource(
        create_table("parted", f"entity_id {kind}, dt date, age double precision", rows)
    )

    parts = json.loads(json.dumps(source.row_parts(MIDDLE, rows_per_part=3)))  # as stored
    read = ids_read(source, MIDDLE, parts)

    assert len(parts) >= 4
    assert sum(read, Counter()) == Counter(ids)  # every row, none twice
    assert all(not (a.keys() & b.keys()) for n, a in enumerate(read) for b in read[n + 1 :])
    assert parts[0]["id_from"] is None and parts[-1]["id_to"] is None


@pytest.mark.django_db(transaction=True)
def test_postgres_gives_one_part_for_a_small_or_empty_slice(create_table):
    source = PostgresSource(
        create_table(
            "small", "entity_id bigint, dt date, age float8", [(1, MIDDLE, 1.0), (2, MIDDLE, 2.0)]
        )
    )

    assert source.row_parts(MIDDLE, rows_per_part=100) == [{"id_from": None, "id_to": None}]
    assert source.row_parts(FIRST, rows_per_part=100) == [{"id_from": None, "id_to": None}]


def test_parquet_parts_are_whole_row_groups_covering_the_slice_once(tmp_path):
    day = date(2026, 12, 1)
    (tmp_path / f"dt={day}").mkdir()
    for n in range(2):
        data = pa.Table.from_pandas(
            frame(MIDDLE, rows=20).assign(entity_id=lambda f, n=n: f.entity_id + 100 * n)
        )
        pq.write_table(data, tmp_path / f"dt={day}" / f"part-{n}.parquet", row_group_size=5)
    source = ParquetSource(str(tmp_path))

    parts = source.row_parts(day, rows_per_part=8)
    read = ids_read(source, day, parts)

    assert len(parts) == 4  # 8 row groups of 5 rows, two to a part
    assert sum(read, Counter()) == Counter([*range(20), *range(100, 120)])
    assert all(sum(c.values()) == 10 for c in read)


def test_it_cuts_batches_of_any_size_into_batches_of_exactly_the_rows_asked():
    pieces = [pa.record_batch({"x": list(range(n))}) for n in (3, 5, 1, 7, 2)]

    got = list(rechunk(pieces, 4))

    assert [b.num_rows for b in got] == [4, 4, 4, 4, 2]
    assert [x for b in got for x in b["x"].to_pylist()] == [
        x for b in pieces for x in b["x"].to_pylist()
    ]


@pytest.mark.django_db(transaction=True)
def test_postgres_samples_only_the_rows_asked_for(postgres_table):
    sample = PostgresSource(postgres_table).sample(MIDDLE, ["entity_id", "region"], rows=3)

    assert sample.num_rows == 3
    assert pa.types.is_dictionary(sample.schema.field("region").type)


@pytest.mark.django_db(transaction=True)
def test_postgres_stream_can_be_dropped_midway_and_the_source_reads_again(postgres_table):
    source = PostgresSource(postgres_table)
    stream = source.batches(MIDDLE, COLUMNS, batch_rows=2)
    next(stream)
    stream.close()

    assert sum(b.num_rows for b in read_all(source, MIDDLE, COLUMNS, 10)) == SLICES[MIDDLE]


@pytest.mark.django_db(transaction=True)
def test_postgres_keeps_other_uri_parameters_and_leaves_out_the_table(postgres_table):
    source = PostgresSource(postgres_table + "&application_name=dropscore-features")

    assert source.dsn_and_table[0].endswith("?application_name=dropscore-features")
    assert source.slices() == [FIRST, MIDDLE, LAST]


# --- unreachable and misconfigured sources ------------------------------------


def test_it_finds_no_slice_in_a_local_path_that_does_not_exist(tmp_path):
    source = ParquetSource(str(tmp_path / "nowhere"))

    assert source.slices() == []
    with pytest.raises(FeatureSourceError, match="has no slice on or before"):
        source.latest_slice(date(2026, 11, 20))


def test_it_cannot_connect_to_postgres_on_a_closed_port():
    source = PostgresSource(f"postgresql://postgres@127.0.0.1:{free_port()}/test?table=features")

    with pytest.raises(FeatureSourceError, match="cannot connect.*Connection refused"):
        source.latest_slice(date(2026, 11, 20))


@pytest.mark.django_db(transaction=True)
def test_it_cannot_connect_to_postgres_as_a_role_that_does_not_exist(postgres_table):
    source = PostgresSource(postgres_table.replace("://postgres", "://nobody-here", 1))

    with pytest.raises(FeatureSourceError, match='cannot connect.*role "nobody-here"'):
        source.columns(MIDDLE)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("call", ["slices", "latest_slice", "columns", "batches", "row_parts"])
def test_it_names_a_missing_postgres_table(postgres_table, call):
    source = PostgresSource(postgres_table.replace("table=features_test", "table=no_such"))
    calls = {
        "slices": lambda: source.slices(),
        "latest_slice": lambda: source.latest_slice(MIDDLE),
        "columns": lambda: source.columns(MIDDLE),
        "batches": lambda: read_all(source, MIDDLE, COLUMNS, 10),
        "row_parts": lambda: source.row_parts(MIDDLE, 10),
    }

    with pytest.raises(FeatureSourceError, match='"no_such" failed: .*"no_such" does not exist'):
        calls[call]()


@pytest.mark.django_db(transaction=True)
def test_a_hostile_table_or_column_name_is_only_ever_a_name(postgres_table):
    from django.db import connection

    hostile = PostgresSource(
        postgres_table.replace(
            "table=features_test", "table=features_test%22;DROP TABLE features_test;--"
        )
    )
    with pytest.raises(FeatureSourceError, match="does not exist"):
        hostile.slices()
    with pytest.raises(FeatureSourceError, match="does not exist"):
        read_all(PostgresSource(postgres_table), MIDDLE, ['age" FROM pg_user; --'], 10)

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM features_test")
        assert cursor.fetchone()[0] == sum(SLICES.values())


def test_it_refuses_a_postgres_table_name_of_more_than_schema_and_table():
    source = PostgresSource("postgresql://postgres@127.0.0.1:5432/test?table=a.b.c")

    with pytest.raises(FeatureSourceError, match="'a.b.c' is not a table name"):
        source.slices()


def test_it_asks_for_the_table_when_a_postgres_uri_names_none():
    source = PostgresSource("postgresql://postgres@127.0.0.1:5432/test")

    with pytest.raises(FeatureSourceError, match=r"names no table: add \?table=<name>"):
        source.slices()


# --- settings -----------------------------------------------------------------


def test_it_has_no_source_when_features_uri_is_blank(settings):
    settings.FEATURES_URI = ""
    assert source_from_settings() is None


def test_it_builds_a_parquet_source_for_a_local_path(settings, local_root):
    settings.FEATURES_URI = str(local_root)
    source = source_from_settings()

    assert isinstance(source, ParquetSource)
    assert source.slices() == [FIRST, MIDDLE, LAST]


def test_it_builds_a_parquet_source_for_s3(settings, s3_root):
    settings.FEATURES_URI = s3_root
    source = source_from_settings()

    assert isinstance(source, ParquetSource)
    assert source.s3_options == s3_options()
    assert source.slices() == [FIRST, MIDDLE, LAST]


def test_it_builds_a_postgres_source_for_a_postgresql_uri(settings):
    settings.FEATURES_URI = "postgresql://scorer@db.example:5432/warehouse?table=features"
    settings.FEATURES_ID_COLUMN = "customer_id"
    source = source_from_settings()

    assert isinstance(source, PostgresSource)
    assert source.uri == settings.FEATURES_URI
    assert source.id_column == "customer_id"
    assert source.dsn_and_table == ("postgresql://scorer@db.example:5432/warehouse", "features")
