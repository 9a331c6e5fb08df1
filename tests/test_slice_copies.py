"""A part of a slice kept once for a batch's shards (scoring.engine.slice_copies), on the
real S3 server. The flow through workers and PostgreSQL is tests/test_engine.py's."""

from datetime import date

import pyarrow as pa
import pytest

from scoring.engine import features as sources
from scoring.engine import slice_copies
from scoring.models import Batch, BatchPart, SliceCopy
from scoring.packages import storage
from tests.factories import features

pytestmark = pytest.mark.django_db(transaction=True)
COLUMNS = ["entity_id", *features.FEATURES]


def unit_of(copy: SliceCopy) -> BatchPart:
    return BatchPart(batch=copy.batch, date=copy.date, slice_date=copy.date, index=copy.index)


def read(source, columns: list[str]) -> pa.Table:
    return pa.Table.from_batches(source.batches(date.today(), columns, 200))


@pytest.fixture
def local_source(feature_table) -> sources.ParquetSource:
    """Local Parquet in a database's place: copies are kept for any source marked remote."""
    source = sources.ParquetSource(str(feature_table))
    source.remote = True
    return source


@pytest.fixture
def planned_copy(s3_server) -> SliceCopy:
    """A batch's copy of part 0, planned; what it keeps on S3 goes with the test."""
    batch = Batch.objects.create()
    yield SliceCopy.objects.create(batch=batch, date=date.today(), index=0, columns=COLUMNS)
    slice_copies.discard(batch.id)


def test_the_first_unit_keeps_the_copy_and_the_next_reads_it(planned_copy, local_source):
    copy = planned_copy
    own = ["entity_id", "monthly_spend"]

    first = slice_copies.source_for(local_source, unit_of(copy))
    first_rows = read(first, own)

    assert first_rows.column_names == own and first_rows.num_rows == 500
    copy.refresh_from_db()
    assert copy.status == "ready"
    second = slice_copies.source_for(local_source, unit_of(copy))
    assert isinstance(second, slice_copies.Copied)
    assert read(second, own).equals(first_rows)
    assert read(second, COLUMNS).equals(read(local_source, COLUMNS))


@pytest.fixture
def s3_refusing(s3_server, settings):
    """The S3 server answers every request of this process with 403 (a wrong secret key)."""
    settings.S3_SECRET_KEY = "not-the-secret"
    storage.client.cache_clear()
    yield
    storage.client.cache_clear()


def test_a_copy_s3_refuses_leaves_the_unit_its_rows_and_the_others_the_source(
    planned_copy, s3_refusing, local_source
):
    copy = planned_copy

    rows = read(slice_copies.source_for(local_source, unit_of(copy)), COLUMNS)

    assert rows.equals(read(local_source, COLUMNS))
    copy.refresh_from_db()
    assert copy.status == "failed"
    assert slice_copies.source_for(local_source, unit_of(copy)) is local_source


def test_a_unit_starting_while_the_copy_is_written_reads_the_source_without_waiting(
    planned_copy, local_source
):
    copy = planned_copy
    SliceCopy.objects.filter(id=copy.id).update(status="writing")

    assert slice_copies.source_for(local_source, unit_of(copy)) is local_source
