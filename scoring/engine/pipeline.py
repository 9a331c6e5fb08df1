"""Scoring one slice chunk by chunk: three things go on at once.

A reading thread decodes the next chunk and writes it once as an Arrow file in shared
memory; every model's sandbox maps the current chunk and scores it; writing threads
stream the scores of the chunk before into each run's file of the scores table. A model
that fails (its predict raises, bad output, a timeout) fails alone; the others go on.
"""

import contextlib
import queue
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

import pyarrow as pa
from django.conf import settings
from django.utils import timezone

from scoring.engine import features, scores
from scoring.engine.limits import sandbox_limits
from scoring.engine.timing import Stopwatch
from scoring.models import ScoringRun
from scoring.packages import storage
from scoring.quality import samples
from scoring.runs import lifecycle
from scoring.sandbox.client import Sandbox
from scoring.sandbox.limits import SandboxError

WRITING_THREADS = 4


@dataclass(eq=False)
class Scorer:
    """One run being scored: its sandbox, its scores file being written, the rows sampled."""

    run: ScoringRun
    sandbox: Sandbox
    workdir: Path
    writer: scores.RunWriter
    sample: samples.RowSample = field(repr=False)  # shared by the scorers of a slice
    failed: bool = False

    @property
    def features(self) -> list[str]:
        return self.run.version.package["features"]


@dataclass
class Handoff:
    """A chunk in shared memory, sent to the sandboxes; then its scores on their way to S3."""

    chunk: pa.RecordBatch
    index: int
    path: Path
    sent: list[Scorer]
    scored_at: datetime
    written: dict[Scorer, Future] = field(default_factory=dict)
    sampled: Future | None = None

    def scores_path(self, scorer: Scorer) -> Path:
        return self.path.with_name(f"scores-{scorer.run.id}-{self.index}.arrow")


class SlicePipeline:
    """The scoring of one slice, or of the part of it in `row_groups`, by a set of runs.

    Its sandboxes, working folders and chunk files live in `stack`: they go when the
    caller's ExitStack closes, whatever happened.
    """

    def __init__(
        self,
        source,
        slice_date: date,
        stack: contextlib.ExitStack,
        clock: Stopwatch,
        part_index: int = 0,
        row_groups: list | None = None,
    ):
        self.source = source
        self.slice_date = slice_date
        self.stack = stack
        self.clock = clock
        self.part_index = part_index
        self.row_groups = row_groups

    def fail(self, run: ScoringRun, error: str) -> None:
        lifecycle.fail(run, error, self.slice_date)

    def start(self, ready: list[ScoringRun]) -> list[Scorer]:
        """Download each package and load it in a sandbox that serves the whole slice.

        The sandboxes load at the same time: most of a load is importing the model's
        libraries, which is CPU work the cores share.
        """
        loading = []
        sample = samples.RowSample(settings.QUALITY_SAMPLE_ROWS)
        for run in ready:
            workdir = Path(
                self.stack.enter_context(
                    tempfile.TemporaryDirectory(prefix=f"dropscore-run-{run.id}-")
                )
            )
            try:
                with open(workdir / "package.dill", "wb") as file:
                    storage.download(run.version.file.name, run.version.sha256, file)
                sandbox = self.stack.enter_context(Sandbox(workdir, sandbox_limits()))
                sandbox.send({"cmd": "load", "path": str(workdir / "package.dill")}, "loading")
            except (SandboxError, storage.StorageError) as exc:
                self.fail(run, str(exc))
                continue
            writer = scores.RunWriter(run, self.part_index)
            loading.append(Scorer(run, sandbox, workdir, writer, sample))
        scorers = []
        for scorer in loading:
            try:
                scorer.sandbox.receive("loading")
                scorers.append(scorer)
            except SandboxError as exc:
                self.fail(scorer.run, str(exc))
        return scorers

    def score(self, scorers: list[Scorer]) -> list[Scorer]:
        """Score the slice chunk by chunk; the scorers still alive."""
        if not scorers:
            return []
        chunk_dir = Path(
            self.stack.enter_context(
                tempfile.TemporaryDirectory(
                    prefix="dropscore-chunk-", dir=settings.CHUNK_DIR or None
                )
            )
        )
        columns = [self.source.id_column, *union(s.features for s in scorers)]
        chunk_rows = min(
            s.run.version.package["params"].get("chunk_rows", settings.CHUNK_ROWS) for s in scorers
        )
        batches = self.source.batches(
            self.slice_date, columns, chunk_rows, row_groups=self.row_groups
        )
        # The reading thread also writes each chunk to shared memory, and writing threads
        # take the scores to S3: the worker's own thread only passes chunks and scores
        # between them and the sandboxes, so the sandboxes never wait for it.
        chunks = read_ahead(
            batches,
            prepare=lambda index, chunk: write_chunk(chunk, chunk_dir / f"chunk-{index}.arrow"),
        )
        try:
            with ThreadPoolExecutor(
                max_workers=WRITING_THREADS, thread_name_prefix="scores"
            ) as writes:
                self.flow(chunks, scorers, writes)
        except (features.FeatureSourceError, OSError) as exc:
            for scorer in scorers:
                if not scorer.failed:
                    scorer.failed = True
                    self.fail(scorer.run, f"reading slice {self.slice_date} failed: {exc}")
        finally:
            chunks.close()
        for scorer in scorers:
            if scorer.failed:  # its file never reaches the log
                scorer.writer.abort()
        return [s for s in scorers if not s.failed]

    def flow(self, chunks, scorers: list[Scorer], writes: Executor) -> None:
        """Two chunks in flight: the sandboxes score chunk i while the worker takes in the
        scores of chunk i-1 and the writing threads write them. A chunk's writes start only
        once the chunk before is written, so each run's file gets its chunks in order."""
        in_flight = writing = None
        for index, (chunk, path) in enumerate(self.clock.each("read", chunks)):
            alive = [s for s in scorers if not s.failed]
            if not alive:
                return
            handed = self.hand_off(chunk, index, path, alive)
            if in_flight is not None:
                writing = self.take_in(in_flight, writing, writes)
            in_flight = handed
        if in_flight is not None:
            writing = self.take_in(in_flight, writing, writes)
        if writing is not None:
            self.settle(writing)

    def take_in(self, handoff: Handoff, writing: Handoff | None, writes: Executor) -> Handoff:
        """Collect a chunk's scores and start writing them once the chunk before is written;
        returns the chunk now being written."""
        results = self.collect(handoff)
        if writing is not None:
            self.settle(writing)
        self.write(handoff, results, writes)
        return handoff

    def hand_off(self, chunk: pa.RecordBatch, index: int, path: Path, scorers: list[Scorer]):
        """Every sandbox maps the chunk's file and scores it: all at once."""
        handoff = Handoff(chunk, index, path, [], timezone.now())
        for scorer in scorers:
            try:
                scorer.sandbox.send_score(path, handoff.scores_path(scorer))
                handoff.sent.append(scorer)
            except SandboxError as exc:
                self.drop(scorer, exc, index)
        return handoff

    def collect(self, handoff: Handoff) -> dict:
        """Each sandbox's scores of a chunk: {scorer: scores}."""
        results = {}
        for scorer in handoff.sent:
            if scorer.failed:  # failed on the chunk before: this one was sent, never scored
                continue
            output = handoff.scores_path(scorer)
            try:
                with self.clock("predict"):
                    scorer.sandbox.receive("scoring")
                with pa.memory_map(str(output)) as source:
                    table = pa.ipc.open_file(source).read_all()
                results[scorer] = table.column("score").combine_chunks()
            except SandboxError as exc:
                self.drop(scorer, exc, handoff.index)
            finally:
                output.unlink(missing_ok=True)
        handoff.path.unlink()
        return results

    def write(self, handoff: Handoff, results: dict, writes: Executor) -> None:
        """Hand the chunk's scores to the writing threads: each run's to its file, side by
        side (Parquet encoding and S3 uploads release the GIL), and the rows to the sample."""
        entity_ids = handoff.chunk.column(0)
        handoff.written = {
            scorer: writes.submit(scorer.writer.write, entity_ids, values, handoff.scored_at)
            for scorer, values in results.items()
        }
        if results:
            sample = next(iter(results)).sample
            scored = {scorer.run.id: values for scorer, values in results.items()}
            handoff.sampled = writes.submit(sample.offer, handoff.chunk, scored)

    def settle(self, handoff: Handoff) -> None:
        """Wait until a chunk is written; a run whose write failed (S3 refused) fails alone."""
        with self.clock("write"):
            wait([*handoff.written.values(), *([handoff.sampled] if handoff.sampled else [])])
        for scorer, written in handoff.written.items():
            if written.exception() is not None and not scorer.failed:
                scorer.failed = True
                self.fail(scorer.run, f"writing the scores failed: {written.exception()}")
                scorer.sandbox.kill()
        if handoff.sampled is not None and handoff.sampled.exception() is not None:
            raise handoff.sampled.exception()

    def drop(self, scorer: Scorer, error: SandboxError, index: int) -> None:
        """A model failed on a chunk: its run fails alone, its sandbox goes (its file at the end)."""
        scorer.failed = True
        self.fail(scorer.run, f"{error} (chunk {index + 1} of slice {self.slice_date})")
        scorer.sandbox.kill()


def read_ahead(batches: Iterator[pa.RecordBatch], prepare, depth: int = 1) -> Iterator:
    """Read the next chunk, and `prepare(index, chunk)` it, in a thread while the
    sandboxes score this one. Parquet decoding releases the GIL: reading overlaps scoring."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for index, batch in enumerate(batches):
                prepared = prepare(index, batch)
                while not stop.is_set():
                    try:
                        ready.put(("batch", prepared), timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ready.put(("end", None))
        except BaseException as exc:  # handed to the consumer, raised in its thread
            ready.put(("error", exc))

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            kind, item = ready.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def write_chunk(chunk: pa.RecordBatch, path: Path) -> tuple[pa.RecordBatch, Path]:
    """The chunk as an Arrow file in shared memory, written once for every sandbox."""
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, chunk.schema) as writer:
        writer.write_batch(chunk)
    return chunk, path


def union(feature_lists) -> list[str]:
    """All features, each once, in the order first seen."""
    return list(dict.fromkeys(name for names in feature_lists for name in names))
