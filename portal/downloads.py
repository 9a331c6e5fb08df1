"""Downloads streamed in constant memory: a run's scores as CSV or Parquet, batch by batch;
a package version's exact bytes from S3."""

import base64
import io

import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from django.http import StreamingHttpResponse

from scoring.engine import scores
from scoring.models import PackageVersion
from scoring.packages import storage

CONTENT_TYPES = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet"}


class Drain(io.RawIOBase):
    """A write-only file whose bytes are taken out as they come: a streaming sink."""

    def __init__(self):
        self.buffer = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.buffer += data
        return len(data)

    def take(self) -> bytes:
        data, self.buffer = bytes(self.buffer), bytearray()
        return data


def csv_chunks(run):
    header = True
    for batch in scores.run_scores(run):
        out = io.BytesIO()
        pa_csv.write_csv(batch, out, pa_csv.WriteOptions(include_header=header))
        header = False
        yield out.getvalue()
    if header:  # no rows: still a header
        yield b'"entity_id","score"\n'


def parquet_chunks(run):
    sink, writer = Drain(), None
    for batch in scores.run_scores(run):
        writer = writer or pq.ParquetWriter(sink, batch.schema)
        writer.write_batch(batch)
        yield sink.take()
    if writer is not None:
        writer.close()
        yield sink.take()


def stream_scores(run, kind: str) -> StreamingHttpResponse:
    chunks = csv_chunks(run) if kind == "csv" else parquet_chunks(run)
    response = StreamingHttpResponse(chunks, content_type=CONTENT_TYPES[kind])
    name = f"{run.deployment.slug}-v{run.version.number}-{run.date}-run{run.id}.{kind}"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


def stream_package(version: PackageVersion) -> StreamingHttpResponse:
    """The version's file as uploaded, with its sha256 in two headers: Repr-Digest (RFC 9530)
    and X-Package-SHA256 (hex, as the page and the API show it). StorageError when S3 fails."""
    blocks = storage.read_blocks(version.file.name, version.sha256)
    response = StreamingHttpResponse(blocks, content_type="application/octet-stream")
    response["Content-Length"] = str(version.size)
    name = f"{version.deployment.slug}-v{version.number}.dill"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    response["X-Package-SHA256"] = version.sha256
    digest = base64.b64encode(bytes.fromhex(version.sha256)).decode()
    response["Repr-Digest"] = f"sha-256=:{digest}:"
    return response
