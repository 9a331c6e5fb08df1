"""A Spark task's side: the rows of one partition scored by every model of the batch.

It runs in the executor's Python worker, which knows no Django settings and holds no
secret but the S3 key the scores are written with: everything it needs comes with the task
(`TaskPlan`) and the packages' bytes with a broadcast. The models run in the same sandboxes
as on a Celery worker (scoring.engine.chunk_scoring): a zygote of the Python worker's own
forks them, confined, from a bare environment. A model that fails is reported in the
task's output and fails alone; an error of the task itself (S3 down, the worker killed)
fails the task, which Spark tries again; only the output of the attempt that finished
reaches the driver, so a failed attempt's files never reach the log.
"""

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
from pyarrow import fs

from scoring.engine import pool, scores, traffic
from scoring.engine.chunk_scoring import ChunkScoring, Group, Scorer, write_chunk
from scoring.engine.features import encode_strings, rechunk
from scoring.engine.spark import failures
from scoring.engine.timing import Stopwatch
from scoring.quality import profiles, samples
from scoring.sandbox import scratch
from scoring.sandbox.limits import Limits

# One row per run of the task (its files, profile or error), and one for the task itself
# (run_id null: its sample of rows and what its sandboxes found of the host).
RESULT_SCHEMA = pa.schema(
    [
        ("run_id", pa.int64()),
        ("error", pa.string()),
        ("files", pa.string()),
        ("profile", pa.string()),
        ("sample", pa.binary()),
        ("protections", pa.string()),
        ("host", pa.string()),
        ("timing", pa.string()),
    ]
)


@dataclass(frozen=True)
class Version:
    number: int


@dataclass(frozen=True)
class RunRef:
    """What a task knows of a run: all the scores table's writer and the sandboxes need."""

    id: int
    deployment_id: int
    date: date
    attempts: int
    version: Version
    owner: str  # Deployment.owner_key
    sha256: str
    role: str
    split_share: float | None = None
    baseline_edges: list | None = None
    requirements: tuple[str, ...] = ()  # the libraries its package pins


@dataclass(frozen=True)
class TaskPlan:
    runs: list[RunRef]
    packages: object  # a Broadcast of {sha256: the package's bytes}
    slice_date: date
    chunk_rows: int
    sample_rows: int
    limits: Limits
    pool: int
    scores_bucket: str  # where the scores tables are (SCORES_BUCKET)
    chunk_dir: str | None  # where chunks are handed to sandboxes (CHUNK_DIR)
    s3: dict = field(repr=False)  # pyarrow S3FileSystem's arguments


def score_partition(plan: TaskPlan):
    """The function mapInArrow calls with the partition's record batches."""

    def score(batches):
        from pyspark import TaskContext

        context = TaskContext.get()
        index = context.partitionId() if context else 0
        try:
            yield from PartitionScoring(plan, index).run(batches)
        except Exception as exc:  # Spark's error for the driver names no executor: the note does
            exc.add_note(failures.executor_note(os.uname().nodename))
            raise

    return score


class ArrowSink:
    """A scores file written through pyarrow's own S3 filesystem (no JVM connector)."""

    def __init__(self, filesystem: fs.FileSystem, key: str):
        self.filesystem, self.key = filesystem, key
        self.stream = filesystem.open_output_stream(key)

    @property
    def closed(self) -> bool:
        return self.stream.closed

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        self.stream.flush()

    def write(self, data) -> int:
        return self.stream.write(data)

    def tell(self) -> int:
        return self.stream.tell()

    def close(self) -> None:
        self.stream.close()

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.stream.close()
            self.filesystem.delete_file(self.key)


class PartitionScoring(ChunkScoring):
    """A task: its partition's rows in chunks, each scored by every run's model in the
    task's own sandboxes, the scores streamed into one file per run; a run that fails
    is reported, never raised."""

    def __init__(self, plan: TaskPlan, index: int):
        self.plan = plan
        self.index = index
        self.errors: dict[int, str] = {}
        self.clock = Stopwatch()
        self.rows = self.chunks = 0
        self.stack = contextlib.ExitStack()
        busy = pool.busy_limit(plan.pool, cores=1)  # Spark gives each task a core
        super().__init__(plan.slice_date, self.stack, plan.limits, busy)

    def fail(self, run: RunRef, error: str) -> None:
        self.errors.setdefault(run.id, error)

    def run(self, batches):
        filesystem = fs.S3FileSystem(**self.plan.s3)
        sample = samples.RowSample(self.plan.sample_rows)
        scorers = [
            Scorer(
                run,
                scores.RunWriter(
                    run,
                    self.index,
                    lambda key: ArrowSink(filesystem, f"{self.plan.scores_bucket}/{key}"),
                ),
                sample,
                profiles.ScoreProfile(run.baseline_edges),
            )
            for run in self.plan.runs
        ]
        with self.stack:
            try:
                self.score(scorers, batches, sample)
            except BaseException:  # the attempt fails: none of its files is wanted
                for scorer in scorers:
                    scorer.writer.abort()
                raise
        yield self.result(scorers, sample)

    def score(self, scorers: list[Scorer], batches, sample: samples.RowSample) -> None:
        for scorer in scorers:
            scorer.package = local_copy(self.plan.packages.value, scorer.run.sha256)
        # A sandbox serves one owner's models that pin the same libraries.
        waves = pool.waves(
            scorers, self.plan.pool, owner=lambda s: (s.run.owner, s.run.requirements)
        )
        groups = [Group(members, members[0].run.requirements) for wave in waves for members in wave]
        chunk_dir = self.stack.enter_context(scratch.folder("chunk", self.plan.chunk_dir))
        self.stack.callback(self.close_all, groups)
        chunks = self.clock.each("read", rechunk(batches, self.plan.chunk_rows))
        for index, batch in enumerate(chunks):
            if not any(group.alive() for group in groups):
                break
            with self.clock("read"):
                chunk, path = write_chunk(encode_strings(batch), chunk_dir / f"chunk-{index}.arrow")
            scored_at = datetime.now(UTC)
            # The first chunk's sandboxes start and load their models: the task's fixed cost.
            with self.clock("predict" if index else "first chunk"):
                results = self.score_chunk(groups, path, index, resident=len(waves) == 1)
            path.unlink()
            sides = traffic.ChunkSides(chunk.column(0))
            with self.clock("write"):
                for scorer, values in results.items():
                    if not scorer.failed:
                        scorer.write(sides, values, scored_at)
                sample.offer(chunk, {s.run.id: v for s, v in results.items() if not s.failed})
            self.rows += chunk.num_rows
            self.chunks += 1

    def result(self, scorers: list[Scorer], sample: samples.RowSample) -> pa.RecordBatch:
        rows = []
        for scorer in scorers:
            if scorer.failed:
                scorer.writer.abort()
                rows.append(
                    {"run_id": scorer.run.id, "error": self.errors.get(scorer.run.id, "failed")}
                )
                continue
            with self.clock("write"):
                files = [scorer.writer.close()] if scorer.writer.rows else []
            rows.append(
                {
                    "run_id": scorer.run.id,
                    "files": json.dumps(files),
                    "profile": json.dumps(scorer.profile.to_json()),
                }
            )
        rows.append(
            {
                "sample": table_bytes(sample.table),
                "protections": json.dumps(self.protections),
                "host": os.uname().nodename,
                "timing": json.dumps({**self.phases(), "rows": self.rows, "chunks": self.chunks}),
            }
        )
        return pa.RecordBatch.from_pylist(rows, schema=RESULT_SCHEMA)

    def phases(self) -> dict[str, float]:
        """The task's seconds: `start` is its fixed cost (sandboxes started, models loaded),
        the first chunk's time beyond what the later chunks took on average."""
        seconds = dict(self.clock.seconds)
        first = seconds.pop("first chunk", 0.0)
        if self.chunks < 2:  # one chunk: its start and its predict cannot be told apart
            return {**seconds, "start+predict": first}
        later = seconds.get("predict", 0.0)
        start = max(first - later / (self.chunks - 1), 0.0)
        return {**seconds, "start": start, "predict": later + first - start}


def local_copy(packages: dict[str, bytes], sha256: str) -> Path:
    """The package as a file of this Python worker's, checked against its sha256 once."""
    folder = Path(tempfile.gettempdir()) / f"dropscore-spark-packages-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / f"{sha256}.dill"
    if not path.exists():
        data = packages[sha256]
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ValueError(f"the package {sha256[:12]} arrived damaged on this executor")
        partial = path.with_suffix(f".{os.getpid()}.partial")
        partial.write_bytes(data)
        partial.replace(path)
    return path


def table_bytes(table: pa.Table | None) -> bytes | None:
    if table is None:
        return None
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()
