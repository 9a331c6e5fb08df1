"""Scoring a unit's rows chunk by chunk with the worker's bounded pool of sandboxes.

A unit is some runs (a shard of a batch) and some rows (a slice, or a part of it). Three
things go on at once: a reading thread decodes the next chunk and writes it once as an
Arrow file in shared memory; the pool's sandboxes take turns on the current chunk, each
scoring its models (several of one owner) one after the other; writing threads stream the
scores of the chunk before into each run's file of the scores table.

When the unit's owners fit in the pool, each sandbox loads its models once and serves
every chunk; otherwise the sandboxes take turns: each loads its models, scores the chunk
and makes room for the next (scoring.engine.pool).

A model that fails (it cannot load, its predict raises, bad output, a timeout, a crash
of its sandbox) fails alone: the sandbox tells each model's outcome as it goes, so a
crash is charged to the model it was working on; the others of its sandbox start again
in a new one.
"""

import contextlib
import json
import logging
import queue
import selectors
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pyarrow as pa
from django.conf import settings
from django.utils import timezone

from scoring.engine import features, package_cache, pool, scores
from scoring.engine.limits import sandbox_limits
from scoring.engine.timing import Stopwatch
from scoring.models import ScoringRun
from scoring.quality import assessment, profiles, samples
from scoring.runs import lifecycle
from scoring.sandbox.client import Sandbox
from scoring.sandbox.limits import SandboxError

log = logging.getLogger(__name__)
WRITING_THREADS = 4
WATCH_SECONDS = 0.2  # how often busy sandboxes are checked for time and memory


@dataclass(eq=False)
class Scorer:
    """One run being scored: its scores file being written, the rows sampled, the profile
    of its scores counted."""

    run: ScoringRun
    writer: scores.RunWriter
    sample: samples.RowSample = field(repr=False)  # shared by the scorers of a unit
    # Profiles (quality checks at fleet scale): counted in the writing thread, with the file.
    profile: profiles.ScoreProfile = field(default_factory=profiles.ScoreProfile, repr=False)
    package: Path | None = None  # the worker's local copy
    failed: bool = False

    def write(self, entity_ids: pa.Array, values: pa.Array, scored_at) -> None:
        """A chunk of the run's scores: into its file, and counted in its profile."""
        self.writer.write(entity_ids, values, scored_at)
        self.profile.add(values)

    @property
    def key(self) -> int:
        return self.run.id

    @property
    def features(self) -> list[str]:
        return self.run.version.package["features"]


@dataclass(eq=False)
class Job:
    """What a sandbox was asked for one chunk, and the replies still to come, in order:
    ("hello",), ("load", scorer) for a new sandbox, then ("score", [scorers])."""

    output: Path
    expected: deque
    deadline: float
    next_watch: float = 0.0  # when its memory is looked at next
    scored: list = field(default_factory=list)  # scorers whose scores are in the output


class Group:
    """A sandbox of the pool and the runs of one owner it serves."""

    def __init__(self, scorers: list[Scorer]):
        self.scorers = scorers
        self.sandbox: Sandbox | None = None
        self.workdir: Path | None = None
        self.job: Job | None = None

    def alive(self) -> list[Scorer]:
        return [s for s in self.scorers if not s.failed]


class SlicePipeline:
    """The scoring of one slice, or of a part of its rows (`part`, from the source's
    `row_parts`), by a set of runs.

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
        part: dict | None = None,
    ):
        self.source = source
        self.slice_date = slice_date
        self.stack = stack
        self.clock = clock
        self.part_index = part_index
        self.part = part
        self.limits = sandbox_limits()
        self.pool = settings.SANDBOX_POOL
        self.busy_limit = pool.busy_limit(self.pool)
        self.live = self.peak = 0  # sandboxes alive now, and at most

    def fail(self, run: ScoringRun, error: str) -> None:
        lifecycle.fail(run, error, self.slice_date)

    def run(self, ready: list[ScoringRun]) -> list[Scorer]:
        """Score the rows with every run that can; the scorers that succeeded."""
        sample = samples.RowSample(settings.QUALITY_SAMPLE_ROWS)
        # Profiles: each run's scores are counted in its baseline's bins as they are written.
        edges = assessment.baseline_edges(ready)
        scorers = [
            Scorer(
                run,
                scores.RunWriter(run, self.part_index),
                sample,
                profiles.ScoreProfile(edges[run.id]),
            )
            for run in ready
        ]
        with self.clock("fetch"):
            copies = package_cache.local_copies(run.version for run in ready)
        for scorer in scorers:
            copy = copies[scorer.run.version_id]
            if isinstance(copy, Exception):
                self.drop(scorer, str(copy))
            else:
                scorer.package = copy
        alive = [s for s in scorers if not s.failed]
        waves = pool.waves(alive, self.pool, owner=lambda s: s.run.deployment.owner_id)
        groups = [Group(scorers) for wave in waves for scorers in wave]
        if groups:
            self.score(groups, resident=len(waves) == 1)
        for scorer in scorers:
            if scorer.failed:  # its file never reaches the log
                scorer.writer.abort()
        log.info(
            "%d runs in %d sandbox groups, at most %d sandboxes alive (pool %d)",
            len(scorers),
            len(groups),
            self.peak,
            self.pool,
        )
        return [s for s in scorers if not s.failed]

    def score(self, groups: list[Group], resident: bool) -> None:
        chunk_dir = Path(
            self.stack.enter_context(
                tempfile.TemporaryDirectory(
                    prefix="dropscore-chunk-", dir=settings.CHUNK_DIR or None
                )
            )
        )
        self.stack.callback(self.close_all, groups)
        scorers = [s for group in groups for s in group.scorers]
        columns = [self.source.id_column, *union(s.features for s in scorers)]
        chunk_rows = min(
            s.run.version.package["params"].get("chunk_rows", settings.CHUNK_ROWS) for s in scorers
        )
        batches = self.source.batches(self.slice_date, columns, chunk_rows, part=self.part)
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
                writing = None
                for index, (chunk, path) in enumerate(self.clock.each("read", chunks)):
                    if not any(group.alive() for group in groups):
                        break
                    scored_at = timezone.now()
                    with self.clock("predict"):
                        results = self.score_chunk(groups, path, index, resident)
                    path.unlink()
                    if writing is not None:
                        self.settle(writing)
                    writing = self.write(chunk, results, scored_at, writes)
                if writing is not None:
                    self.settle(writing)
        except (features.FeatureSourceError, OSError) as exc:
            for scorer in scorers:
                if not scorer.failed:
                    self.drop(scorer, f"reading slice {self.slice_date} failed: {exc}")
        finally:
            chunks.close()

    def score_chunk(self, groups: list[Group], path: Path, index: int, resident: bool) -> dict:
        """Every group's models score the chunk, at most `busy_limit` sandboxes at once;
        returns {scorer: scores}."""
        pending = deque(group for group in groups if group.alive())
        busy: dict[int, Group] = {}
        results: dict[Scorer, pa.Array] = {}
        with selectors.DefaultSelector() as selector:
            while pending or busy:
                while pending and len(busy) < self.busy_limit:
                    group = pending.popleft()
                    if self.dispatch(group, path, index):
                        fd = group.sandbox.fileno()
                        selector.register(fd, selectors.EVENT_READ, group)
                        busy[fd] = group
                for key, _ in selector.select(timeout=WATCH_SECONDS):
                    group = key.data
                    try:
                        if not self.take_replies(group, results):
                            continue
                        lost = None
                    except SandboxError as exc:
                        lost = exc
                    selector.unregister(key.fd)
                    del busy[key.fd]
                    if lost is not None:
                        self.lost(group, lost, index, pending)
                    elif not resident:
                        self.close(group)
                now = time.monotonic()
                for fd, group in list(busy.items()):
                    if now < group.job.next_watch:
                        continue
                    group.job.next_watch = now + WATCH_SECONDS
                    try:
                        group.sandbox.watch(self.stage(group), group.job.deadline)
                    except SandboxError as exc:
                        selector.unregister(fd)
                        del busy[fd]
                        self.lost(group, exc, index, pending)
        return results

    def dispatch(self, group: Group, path: Path, index: int) -> bool:
        """Send the group's sandbox the chunk (starting it, and loading its models, first if
        it has none); False when no model of the group is left to score it."""
        expected = deque()
        try:
            if group.sandbox is None:
                self.start(group)
                expected.append(("hello",))
                for scorer in group.alive():
                    group.sandbox.send_load(scorer.key, scorer.package)
                    expected.append(("load", scorer))
            alive = group.alive()
            output = path.with_name(f"scores-{id(group)}-{index}.arrow")
            group.sandbox.send_score(path, output, [s.key for s in alive])
            expected.append(("score", alive))
        except SandboxError as exc:
            for scorer in group.alive():
                self.drop(scorer, f"{exc} (chunk {index + 1} of slice {self.slice_date})")
            self.close(group)
            return False
        group.job = Job(output, expected, time.monotonic() + self.limits.timeout_seconds)
        return True

    def start(self, group: Group) -> None:
        if group.workdir is None:  # named after the first of its runs, for whoever looks
            prefix = f"dropscore-run-{group.scorers[0].key}-"
            group.workdir = Path(
                self.stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix))
            )
        # The CPU limit is the sandbox's, and a sandbox serves several models.
        limits = self.limits.scaled(len(group.alive()))
        group.sandbox = Sandbox(group.workdir, limits)
        group.sandbox.start()
        self.live += 1
        self.peak = max(self.peak, self.live)

    def close(self, group: Group) -> None:
        if group.sandbox is not None:
            group.sandbox.close()
            group.sandbox = None
            self.live -= 1
        group.job = None

    def close_all(self, groups: list[Group]) -> None:
        for group in groups:
            self.close(group)

    def take_replies(self, group: Group, results: dict) -> bool:
        """Read what the sandbox said; True once it has answered the whole job."""
        job = group.job
        for line in group.sandbox.take_lines():
            reply = json.loads(line)
            job.deadline = time.monotonic() + self.limits.timeout_seconds
            kind = job.expected[0]
            if kind[0] == "hello":
                job.expected.popleft()
            elif kind[0] == "load":
                job.expected.popleft()
                if not reply["ok"]:
                    self.drop(kind[1], reply["error"])
            elif reply.get("progress"):
                scorer = next(s for s in kind[1] if s.key == reply["key"])
                if reply["ok"]:
                    job.scored.append(scorer)
                elif not scorer.failed:
                    self.drop(scorer, f"{reply['error']} (chunk of slice {self.slice_date})")
            else:
                job.expected.popleft()
                if not reply["ok"]:
                    raise SandboxError(reply["error"])
                self.collect(job, results)
                return True
        return False

    def collect(self, job: Job, results: dict) -> None:
        """The scores of the job's models, one record batch each, in the order they scored."""
        try:
            with pa.memory_map(str(job.output)) as source:
                reader = pa.ipc.open_file(source)
                for position, scorer in enumerate(job.scored):
                    if not scorer.failed:
                        results[scorer] = reader.get_batch(position).column(0)
        finally:
            job.output.unlink(missing_ok=True)

    def lost(self, group: Group, error: SandboxError, index: int, pending: deque) -> None:
        """The sandbox died, timed out or went over its memory: the model it was working on
        fails; the others of the group score the chunk again in a new sandbox."""
        culprits = self.culprits(group)
        for scorer in culprits:
            if not scorer.failed:
                self.drop(scorer, f"{error} (chunk {index + 1} of slice {self.slice_date})")
        if group.job is not None:
            group.job.output.unlink(missing_ok=True)
        self.close(group)
        if group.alive():
            pending.append(group)

    @staticmethod
    def culprits(group: Group) -> list[Scorer]:
        """Whom a lost sandbox is charged to: the first model it had not answered for, or
        all of its models when it never started or died with every model answered."""
        job = group.job
        kind = job.expected[0] if job and job.expected else ("hello",)
        if kind[0] == "load":
            return [kind[1]]
        if kind[0] == "score":
            answered = set(job.scored)
            waiting = [s for s in kind[1] if s not in answered and not s.failed]
            if waiting:
                return waiting[:1]
        return group.alive()

    def stage(self, group: Group) -> str:
        kind = group.job.expected[0][0] if group.job and group.job.expected else "score"
        return {"hello": "starting", "load": "loading"}.get(kind, "scoring")

    def write(self, chunk: pa.RecordBatch, results: dict, scored_at, writes: Executor):
        """Hand the chunk's scores to the writing threads: each run's to its file, side by
        side (Parquet encoding and S3 uploads release the GIL), and the rows to the sample."""
        entity_ids = chunk.column(0)
        written = {
            scorer: writes.submit(scorer.write, entity_ids, values, scored_at)
            for scorer, values in results.items()
            if not scorer.failed
        }
        sampled = None
        if written:
            sample = next(iter(written)).sample
            scored = {scorer.run.id: results[scorer] for scorer in written}
            sampled = writes.submit(sample.offer, chunk, scored)
        return written, sampled

    def settle(self, writing: tuple[dict[Scorer, Future], Future | None]) -> None:
        """Wait until a chunk is written; a run whose write failed (S3 refused) fails alone."""
        written, sampled = writing
        with self.clock("write"):
            wait([*written.values(), *([sampled] if sampled else [])])
        for scorer, future in written.items():
            if future.exception() is not None and not scorer.failed:
                self.drop(scorer, f"writing the scores failed: {future.exception()}")
        if sampled is not None and sampled.exception() is not None:
            raise sampled.exception()

    def drop(self, scorer: Scorer, error: str) -> None:
        """A model failed: its run fails alone; its sandbox stops asking it."""
        scorer.failed = True
        self.fail(scorer.run, error)


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
