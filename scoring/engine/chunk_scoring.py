"""The pool's sandboxes taking turns on a chunk: each scores its models (several of one
owner) one after the other, at most `busy_limit` at once, watched for time and memory.

A sandbox keeps its models loaded from chunk to chunk while their packages fit in the
limits' `loaded_bytes`; beyond that they take turns on each chunk, a wave at a time:
loaded, scored and let go, so a sandbox's memory is bounded whatever its models.

A model that fails (it cannot load, its predict raises, bad output, a timeout, a crash
of its sandbox) fails alone: the sandbox tells each model's outcome as it goes, so a
crash is charged to the model it was working on; the others of its sandbox start again
in a new one.

No Django here: the Celery engine (scoring.engine.pipeline) and Spark's executors
(scoring.engine.spark.executor) score chunks the same way.
"""

import contextlib
import json
import queue
import selectors
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa

from scoring.engine import scores, traffic
from scoring.quality import profiles, samples
from scoring.sandbox.client import Sandbox
from scoring.sandbox.environments import Environment
from scoring.sandbox.limits import Limits, SandboxError

WATCH_SECONDS = 0.2  # how often busy sandboxes are checked for time and memory


@dataclass(eq=False)
class Scorer:
    """One run being scored: its scores file being written, the rows sampled, the profile
    of its scores counted."""

    run: Any  # a ScoringRun; on a Spark executor, what it was told of one
    writer: scores.RunWriter
    sample: samples.RowSample = field(repr=False)  # shared by the scorers of a unit
    # Profiles (quality checks at fleet scale): counted in the writing thread, with the file.
    profile: profiles.ScoreProfile = field(default_factory=profiles.ScoreProfile, repr=False)
    package: Path | None = None  # the worker's local copy
    failed: bool = False

    def write(
        self, sides: traffic.ChunkSides, values: pa.Array, scored_at, last: bool = False
    ) -> None:
        """A chunk of the run's scores: into its file, and counted in its profile; under a
        traffic split, only its side's entities (`sides`: the chunk's ids, shared by the
        runs writing it). After the `last` chunk the file is finished here, in a writing
        thread: it goes up to S3 while other runs' files are written, and its buffer goes,
        instead of every file of the unit waiting in memory."""
        entity_ids = sides.entity_ids
        mask = sides.kept(self.run.split_share, self.run.role)
        if mask is not None:
            entity_ids, values = entity_ids.filter(mask), values.filter(mask)
        if len(entity_ids):
            self.writer.write(entity_ids, values, scored_at)
            self.profile.add(values)
        if last and self.writer.rows:
            self.writer.close()

    @property
    def key(self) -> int:
        return self.run.id

    @cached_property
    def package_bytes(self) -> int:
        return self.package.stat().st_size


@dataclass(eq=False)
class Job:
    """What a sandbox was asked for one chunk, and the replies still to come, in order:
    ("hello",) for a new sandbox, ("load", scorer) for each model not loaded, then
    ("score", [scorers]); again for each wave of models still to take their turn."""

    chunk: Path
    index: int
    deadline: float
    expected: deque = field(default_factory=deque)
    waves: deque = field(default_factory=deque)  # lists of scorers still to load and score
    output: Path | None = None  # where the current wave's scores go
    next_watch: float = 0.0  # when its memory is looked at next
    scored: list = field(default_factory=list)  # scorers whose scores are in the output


class Group:
    """A sandbox of the pool and the runs of one owner it serves, all pinning the same
    libraries (`requirements`: the environment its sandbox starts from)."""

    def __init__(self, scorers: list[Scorer], requirements: tuple[str, ...] = ()):
        self.scorers = scorers
        self.requirements = requirements
        self.sandbox: Sandbox | None = None
        self.workdir: Path | None = None
        self.job: Job | None = None
        self.loaded = False  # its sandbox holds its models from chunk to chunk

    def alive(self) -> list[Scorer]:
        return [s for s in self.scorers if not s.failed]


class ChunkScoring:
    """Chunks scored by groups of runs, each group in a sandbox of its own.

    Sandboxes and their working folders live in `stack`: they go when the caller's
    ExitStack closes, whatever happened."""

    def __init__(self, slice_date: date, stack: contextlib.ExitStack, limits: Limits, busy: int):
        self.slice_date = slice_date
        self.stack = stack
        self.limits = limits
        self.busy_limit = busy
        self.live = self.peak = 0  # sandboxes alive now, and at most
        self.protections: dict = {}  # what the last sandbox started found on this host

    def fail(self, run, error: str) -> None:
        """A run failed: the engine records it."""
        raise NotImplementedError

    def environment(self, requirements: tuple[str, ...]) -> Environment | None:
        """The environment a group's sandbox starts from (None: the worker's own). Raises
        SandboxError when it cannot be had; an engine that builds none refuses pins."""
        if requirements:
            raise SandboxError(
                f"the package pins {', '.join(requirements)}: packages with requirements score "
                "on the Celery engine (ENGINE=celery), whose workers build their environments"
            )
        return None

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
                    if self.dispatch(group, path, index, results):
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

    def dispatch(self, group: Group, path: Path, index: int, done: dict) -> bool:
        """Send the group's sandbox the chunk (starting it first if it has none), with the
        loads its models need; False when no model of the group is left to score it (all
        failed, or scored it before their sandbox was lost: `done`)."""
        alive = group.alive()
        todo = [s for s in alive if s not in done]
        if not todo:
            return False
        group.job = job = Job(path, index, time.monotonic() + self.limits.timeout_seconds)
        try:
            if group.sandbox is None:
                self.start(group)
                job.expected.append(("hello",))
            held = sum(s.package_bytes for s in todo)
            if held <= self.limits.loaded_bytes and len(todo) == len(alive):
                self.send_wave(group, todo, load=not group.loaded, release=False)
                group.loaded = True
            else:  # a new sandbox (todo is less than alive only after one was lost)
                job.waves.extend(loading_waves(todo, self.limits.loaded_bytes))
                self.next_wave(group)
        except SandboxError as exc:
            for scorer in group.alive():
                self.drop(scorer, f"{exc} (chunk {index + 1} of slice {self.slice_date})")
            self.close(group)
            return False
        return True

    def send_wave(self, group: Group, scorers: list[Scorer], load: bool, release: bool) -> None:
        """Ask the sandbox to score the chunk with `scorers` (loading them first: `load`; and
        letting them go after: `release`)."""
        job = group.job
        if load:
            for scorer in scorers:
                group.sandbox.send_load(scorer.key, scorer.package)
                job.expected.append(("load", scorer))
        job.output = job.chunk.with_name(f"scores-{id(group)}-{job.index}-{len(job.waves)}.arrow")
        job.scored = []
        group.sandbox.send_score(job.chunk, job.output, [s.key for s in scorers], release)
        job.expected.append(("score", scorers))

    def next_wave(self, group: Group) -> bool:
        """Send the next wave of models still alive their turn; False when none is left."""
        job = group.job
        while job.waves:
            wave = [s for s in job.waves.popleft() if not s.failed]
            if wave:
                self.send_wave(group, wave, load=True, release=True)
                return True
        return False

    def start(self, group: Group) -> None:
        if group.workdir is None:  # named after the first of its runs, for whoever looks
            prefix = f"dropscore-run-{group.scorers[0].key}-"
            group.workdir = Path(
                self.stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix))
            )
        # The CPU limit is the sandbox's, and a sandbox serves several models.
        limits = self.limits.scaled(len(group.alive()))
        group.sandbox = Sandbox(group.workdir, limits, self.environment(group.requirements))
        group.sandbox.start()
        self.live += 1
        self.peak = max(self.peak, self.live)

    def close(self, group: Group) -> None:
        if group.sandbox is not None:
            group.sandbox.close()
            group.sandbox = None
            self.live -= 1
        group.job = None
        group.loaded = False

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
                self.protections = reply.get("protections", self.protections)
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
                return not self.next_wave(group)
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
        if group.job is not None and group.job.output is not None:
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

    def drop(self, scorer: Scorer, error: str) -> None:
        """A model failed: its run fails alone; its sandbox stops asking it."""
        scorer.failed = True
        self.fail(scorer.run, error)


def loading_waves(scorers: list[Scorer], budget: int) -> list[list[Scorer]]:
    """The scorers in turns whose packages together fit in `budget` bytes (one larger than
    the budget takes its turn alone)."""
    waves: list[list[Scorer]] = []
    held = 0
    for scorer in scorers:
        if not waves or held + scorer.package_bytes > budget:
            waves.append([])
            held = 0
        waves[-1].append(scorer)
        held += scorer.package_bytes
    return waves


class ReadAhead:
    """Reads the next chunk, and `prepare(index, chunk)`s it, in a thread while the
    sandboxes score this one. Parquet decoding releases the GIL: reading overlaps scoring.

    `ended()` says that no chunk follows the one taken last, once the thread has looked
    (it has, nearly always, by the time a chunk is scored): its runs' files can be
    finished as they are written."""

    def __init__(self, batches: Iterator[pa.RecordBatch], prepare, depth: int = 1):
        self.ready: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.produced = self.taken = 0
        self.exhausted = False
        self.thread = threading.Thread(target=self.produce, args=(batches, prepare), daemon=True)
        self.thread.start()

    def produce(self, batches, prepare) -> None:
        try:
            for index, batch in enumerate(batches):
                if not self.offer(("batch", prepare(index, batch))):
                    return
                self.produced += 1
            self.exhausted = True
            self.offer(("end", None))
        except BaseException as exc:  # handed to the consumer, raised in its thread
            self.offer(("error", exc))

    def offer(self, item: tuple) -> bool:
        """Queue the item, unless the consumer stopped first; False if it did."""
        while not self.stop.is_set():
            try:
                self.ready.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator:
        while True:
            kind, item = self.ready.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            self.taken += 1
            yield item

    def ended(self) -> bool:
        return self.exhausted and self.taken == self.produced

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def write_chunk(chunk: pa.RecordBatch, path: Path) -> tuple[pa.RecordBatch, Path]:
    """The chunk as an Arrow file in shared memory, written once for every sandbox."""
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, chunk.schema) as writer:
        writer.write_batch(chunk)
    return chunk, path


def union(feature_lists) -> list[str]:
    """All features, each once, in the order first seen."""
    return list(dict.fromkeys(name for names in feature_lists for name in names))
