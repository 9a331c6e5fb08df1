"""A batch: read the union of its models' features once, chunk by chunk; each model scores
each chunk in its own sandbox; the runs of a slice commit their partitions of the scores
table in one transaction. A large slice is split into parts that several workers score.

A model fails alone (missing columns, a crash in predict, bad output, a timeout):
the other runs of the batch still commit. Anything else that goes wrong leaves the
runs running without a heartbeat: tick takes them back and they are retried.
"""

import contextlib
import json
import logging
import queue
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

import pyarrow as pa
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection
from django.utils import timezone

from scoring import checks, features, reports, runs, samples, scores, storage
from scoring.models import Batch, BatchPart, ScoringRun
from scoring.sandbox import Sandbox, SandboxError
from scoring.validation import sandbox_limits

log = logging.getLogger(__name__)
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


def run_batch(batch_id: int) -> None:
    batch = Batch.objects.get(id=batch_id)
    queued = ScoringRun.objects.filter(batch=batch, status=ScoringRun.QUEUED).select_related(
        "deployment", "version"
    )
    claimed = [run for run in queued if runs.claim(run, batch_id)]
    if not claimed:
        return  # a redelivered message, or another worker has them
    started = timezone.now()
    Batch.objects.filter(id=batch_id).update(started_at=started)
    by_date = defaultdict(list)
    for run in claimed:
        by_date[run.date].append(run)
    with Heartbeat(claimed):
        for day, group in sorted(by_date.items()):
            score_date(day, group)
    if batch.parts.exists():
        return  # split over workers: the part that finishes last commits and closes the batch
    finish_batch(batch_id)
    log.info("batch %s done in %.2f s", batch_id, (timezone.now() - started).total_seconds())


def finish_batch(batch_id: int) -> None:
    """The batch is over: mark it, and send each owner the report of their runs in it."""
    Batch.objects.filter(id=batch_id).update(finished_at=timezone.now())
    for report in reports.build_reports(Batch.objects.get(id=batch_id)):
        reports.send_report(report)  # a mail server that is down: tick sends it later


def score_date(day: date, group: list[ScoringRun]) -> None:
    source = features.source_from_settings()
    if source is None:
        for run in group:
            runs.fail(run, "no feature source is configured (FEATURES_URI)")
        return
    try:
        slice_date = source.latest_slice(day)
        available = set(source.columns(slice_date))
    except features.FeatureSourceError as exc:
        for run in group:
            runs.fail(run, str(exc))
        return
    ready = []
    for run in group:
        newer = runs.newer_run(run)
        if newer is not None:
            runs.supersede(run, newer)
            continue
        missing = [name for name in run.version.package["features"] if name not in available]
        if missing:
            runs.fail(
                run,
                f"{len(missing)} features are missing from slice {slice_date}: {', '.join(missing[:30])}",
                slice_date,
            )
        else:
            ready.append(run)
    if ready:
        score_slice(source, slice_date, ready)


def score_slice(source, slice_date: date, ready: list[ScoringRun]) -> None:
    plan = plan_parts(source, slice_date)
    if plan:
        fan_out(ready, slice_date, plan)
        return
    clock = Stopwatch()
    with contextlib.ExitStack() as stack:
        with clock("load"):
            scorers = start_scorers(ready, slice_date, stack)
        scorers = score_range(source, slice_date, scorers, stack, clock)
        with clock("commit"):
            committed = commit(scorers, slice_date)
    with clock("quality"):
        checks.check_runs(committed)
    log.info("slice %s, %d runs in %s", slice_date, len(ready), clock)


def score_range(source, slice_date, scorers, stack, clock, row_groups=None) -> list[Scorer]:
    """Score the slice (or the part of it in `row_groups`) chunk by chunk; the runs still alive."""
    if not scorers:
        return []
    chunk_dir = Path(
        stack.enter_context(
            tempfile.TemporaryDirectory(prefix="dropscore-chunk-", dir=settings.CHUNK_DIR or None)
        )
    )
    columns = [source.id_column, *union(s.run.version.package["features"] for s in scorers)]
    chunk_rows = min(
        s.run.version.package["params"].get("chunk_rows", settings.CHUNK_ROWS) for s in scorers
    )
    # The reading thread also writes each chunk to shared memory, and writing threads
    # take the scores to S3: the worker's own thread only passes chunks and scores
    # between them and the sandboxes, so the sandboxes never wait for it.
    chunks = read_ahead(
        source.batches(slice_date, columns, chunk_rows, row_groups=row_groups),
        prepare=lambda index, chunk: write_chunk(chunk, chunk_dir / f"chunk-{index}.arrow"),
    )
    try:
        with ThreadPoolExecutor(max_workers=WRITING_THREADS, thread_name_prefix="scores") as writes:
            pipeline(chunks, scorers, slice_date, clock, writes)
    except (features.FeatureSourceError, OSError) as exc:
        for scorer in scorers:
            if not scorer.failed:
                scorer.failed = True
                runs.fail(scorer.run, f"reading slice {slice_date} failed: {exc}", slice_date)
    finally:
        chunks.close()
    for scorer in scorers:
        if scorer.failed:  # its file never reaches the log
            scorer.writer.abort()
    return [s for s in scorers if not s.failed]


def pipeline(chunks, scorers: list[Scorer], slice_date: date, clock, writes: Executor) -> None:
    """Two chunks in flight: the sandboxes score chunk i while the worker takes in the
    scores of chunk i-1 and the writing threads write them. A chunk's writes start only
    once the chunk before is written, so each run's file gets its chunks in order."""
    in_flight = writing = None
    for index, (chunk, path) in enumerate(clock.each("read", chunks)):
        alive = [s for s in scorers if not s.failed]
        if not alive:
            return
        handed = hand_off(chunk, index, path, alive, slice_date)
        if in_flight is not None:
            writing = take_in(in_flight, writing, slice_date, clock, writes)
        in_flight = handed
    if in_flight is not None:
        writing = take_in(in_flight, writing, slice_date, clock, writes)
    if writing is not None:
        settle(writing, slice_date, clock)


def take_in(
    handoff: "Handoff", writing: "Handoff | None", slice_date: date, clock, writes: Executor
) -> "Handoff":
    """Collect a chunk's scores and start writing them once the chunk before is written;
    returns the chunk now being written."""
    results = collect(handoff, slice_date, clock)
    if writing is not None:
        settle(writing, slice_date, clock)
    write(handoff, results, writes)
    return handoff


# --- a large slice, split over workers ------------------------------------------------


def plan_parts(source, slice_date: date) -> list[list] | None:
    """Row groups of a large Parquet slice in parts of about PART_ROWS rows, or None."""
    if not isinstance(source, features.ParquetSource) or settings.PART_ROWS <= 0:
        return None
    parts, current, rows = [], {}, 0
    for path, index, count in source.row_groups(slice_date):
        current.setdefault(path, []).append(index)
        rows += count
        if rows >= settings.PART_ROWS:
            parts.append([[p, groups] for p, groups in current.items()])
            current, rows = {}, 0
    if current:
        parts.append([[p, groups] for p, groups in current.items()])
    return parts if len(parts) > 1 else None


def fan_out(ready: list[ScoringRun], slice_date: date, plan: list[list]) -> None:
    """One task per part (a Celery group): more workers on more machines score faster."""
    from celery import group

    from scoring.tasks import score_part

    first = ready[0]
    parts = [
        BatchPart.objects.create(
            batch_id=first.batch_id,
            date=first.date,
            slice_date=slice_date,
            index=index,
            row_groups=row_groups,
        )
        for index, row_groups in enumerate(plan)
    ]
    log.info("slice %s of batch %s: %d parts", slice_date, first.batch_id, len(parts))
    group(score_part.s(part.id) for part in parts).apply_async()


def score_part(part_id: int, worker: str) -> None:
    part = BatchPart.objects.select_related("batch").get(id=part_id)
    if not BatchPart.objects.filter(id=part_id, status=BatchPart.QUEUED).update(
        status=BatchPart.RUNNING, worker=worker
    ):
        return  # a redelivered message
    held = list(
        ScoringRun.objects.filter(
            batch_id=part.batch_id, date=part.date, status=ScoringRun.RUNNING
        ).select_related("deployment", "version")
    )
    clock = Stopwatch()
    with Heartbeat(held), contextlib.ExitStack() as stack:
        with clock("load"):
            scorers = start_scorers(held, part.slice_date, stack, part.index)
        scorers = score_range(
            features.source_from_settings(), part.slice_date, scorers, stack, clock, part.row_groups
        )
        reconnect_if_dropped()
        with clock("stage"):
            files = keep_files(scorers, part.index, part.slice_date)
    BatchPart.objects.filter(id=part_id).update(
        status=BatchPart.DONE, files=files, finished_at=timezone.now()
    )
    log.info("part %s of batch %s: %s", part.index, part.batch_id, clock)
    if join_parts(part):
        commit_parts(part)


def join_parts(part: BatchPart) -> bool:
    """True for exactly one worker: the one that finished the last part of the slice."""
    siblings = BatchPart.objects.filter(batch_id=part.batch_id, date=part.date)
    if siblings.exclude(status=BatchPart.DONE).exists():
        return False
    # Part 0 moves to "committed" once: its conditional update elects the committer.
    return bool(siblings.filter(index=0, status=BatchPart.DONE).update(status="committed"))


def commit_parts(part: BatchPart) -> None:
    """Commit every run of the slice still alive with the files all its parts wrote."""
    siblings = list(BatchPart.objects.filter(batch_id=part.batch_id, date=part.date))
    held = list(
        ScoringRun.objects.filter(
            batch_id=part.batch_id, date=part.date, status=ScoringRun.RUNNING
        ).select_related("deployment", "version")
    )
    files = {run.id: [] for run in held}
    for sibling in siblings:
        for run_id, written in sibling.files.items():
            if int(run_id) in files:
                files[int(run_id)] += written
            else:  # the run failed in another part: its files never reach the log
                scores.remove_files(written)
    alive = []
    for run in held:
        if sum(json.loads(f["stats"])["numRecords"] for f in files[run.id]) == 0:
            runs.fail(run, f"slice {part.slice_date} has no rows", part.slice_date)
        else:
            alive.append(run)
    committed = commit_files(alive, files, part.date, part.slice_date)
    checks.check_runs(committed)
    finish_batch(part.batch_id)


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


class Stopwatch:
    """Seconds spent per phase of a batch, for the worker's log."""

    def __init__(self):
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, phase: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - started

    def each(self, phase: str, items: Iterator):
        """The items of `items`, the time spent waiting for each counted in `phase`."""
        iterator = iter(items)
        while True:
            with self(phase):
                item = next(iterator, StopIteration)
            if item is StopIteration:
                return
            yield item

    def __str__(self) -> str:
        total = time.perf_counter() - self.started
        phases = ", ".join(f"{phase} {seconds:.2f} s" for phase, seconds in self.seconds.items())
        return f"{total:.2f} s: {phases}"


def start_scorers(
    ready: list[ScoringRun], slice_date: date, stack: contextlib.ExitStack, part_index: int = 0
) -> list[Scorer]:
    """Download each package and load it in a sandbox that serves the whole batch.

    The sandboxes load at the same time: most of a load is importing the model's
    libraries, which is CPU work the cores share.
    """
    loading = []
    sample = samples.RowSample(settings.QUALITY_SAMPLE_ROWS)
    for run in ready:
        workdir = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix=f"dropscore-run-{run.id}-"))
        )
        try:
            with open(workdir / "package.dill", "wb") as file:
                storage.download(run.version.key, run.version.sha256, file)
            sandbox = stack.enter_context(Sandbox(workdir, sandbox_limits()))
            sandbox.send({"cmd": "load", "path": str(workdir / "package.dill")}, "loading")
        except (SandboxError, storage.StorageError) as exc:
            runs.fail(run, str(exc), slice_date)
            continue
        loading.append(
            Scorer(
                run,
                sandbox,
                workdir,
                scores.RunWriter(run, part_index),
                sample,
            )
        )
    scorers = []
    for scorer in loading:
        try:
            scorer.sandbox.receive("loading")
            scorers.append(scorer)
        except SandboxError as exc:
            runs.fail(scorer.run, str(exc), slice_date)
    return scorers


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


def write_chunk(chunk: pa.RecordBatch, path: Path) -> tuple[pa.RecordBatch, Path]:
    """The chunk as an Arrow file in shared memory, written once for every sandbox."""
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, chunk.schema) as writer:
        writer.write_batch(chunk)
    return chunk, path


def hand_off(
    chunk: pa.RecordBatch, index: int, path: Path, scorers: list[Scorer], slice_date: date
) -> "Handoff":
    """Every sandbox maps the chunk's file and scores it: all at once."""
    handoff = Handoff(chunk, index, path, [], timezone.now())
    for scorer in scorers:
        try:
            scorer.sandbox.send_score(path, handoff.scores_path(scorer))
            handoff.sent.append(scorer)
        except SandboxError as exc:
            drop(scorer, exc, index, slice_date)
    return handoff


def collect(handoff: Handoff, slice_date: date, clock: "Stopwatch") -> dict:
    """Each sandbox's scores of a chunk: {scorer: scores}."""
    results = {}
    for scorer in handoff.sent:
        if scorer.failed:  # failed on the chunk before: this one was sent, never scored
            continue
        output = handoff.scores_path(scorer)
        try:
            with clock("predict"):
                scorer.sandbox.receive("scoring")
            with pa.memory_map(str(output)) as source:
                table = pa.ipc.open_file(source).read_all()
            results[scorer] = table.column("score").combine_chunks()
        except SandboxError as exc:
            drop(scorer, exc, handoff.index, slice_date)
        finally:
            output.unlink(missing_ok=True)
    handoff.path.unlink()
    return results


def write(handoff: Handoff, results: dict, writes: Executor) -> None:
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


def settle(handoff: Handoff, slice_date: date, clock: "Stopwatch") -> None:
    """Wait until a chunk is written; a run whose write failed (S3 refused) fails alone."""
    with clock("write"):
        wait([*handoff.written.values(), *([handoff.sampled] if handoff.sampled else [])])
    for scorer, written in handoff.written.items():
        if written.exception() is not None and not scorer.failed:
            scorer.failed = True
            runs.fail(scorer.run, f"writing the scores failed: {written.exception()}", slice_date)
            scorer.sandbox.kill()
    if handoff.sampled is not None and handoff.sampled.exception() is not None:
        raise handoff.sampled.exception()


def drop(scorer: Scorer, error: SandboxError, index: int, slice_date: date) -> None:
    """A model failed on a chunk: its run fails alone, its sandbox goes (its file at the end)."""
    scorer.failed = True
    runs.fail(scorer.run, f"{error} (chunk {index + 1} of slice {slice_date})", slice_date)
    scorer.sandbox.kill()


def finish_file(scorer: Scorer) -> list[dict]:
    """Close the run's scores file: its add action, or none for a slice without rows."""
    if scorer.writer.rows == 0:
        scorer.writer.abort()
        return []
    return [scorer.writer.close()]


def keep_files(scorers: list[Scorer], part_index: int, slice_date: date) -> dict[int, list[dict]]:
    """Finish each run's scores file and save the slice's sample: what the commit needs.

    Finishing is mostly waiting for S3 to complete the uploads, so side by side; a run
    whose file cannot be kept (S3 down) fails alone, and every run fails (is retried)
    when the sample their checks need cannot be kept."""
    if not scorers:
        return {}
    run = scorers[0].run
    with ThreadPoolExecutor(max_workers=8) as pool:
        sampled = pool.submit(
            samples.save,
            run.batch_id,
            run.date,
            part_index,
            scorers[0].sample,
            [scorer.run.id for scorer in scorers],
        )
        finishing = [(scorer, pool.submit(finish_file, scorer)) for scorer in scorers]
    unsampled = sampled.exception()
    if unsampled is not None:
        log.error("the sample of batch %s could not be kept: %s", run.batch_id, unsampled)
    files = {}
    for scorer, finished in finishing:
        try:
            written = finished.result()
        except Exception as exc:
            log.exception("the scores of run %s could not be kept", scorer.run.id)
            scorer.writer.abort()
            runs.fail(scorer.run, f"keeping the scores failed: {exc}", slice_date)
            continue
        if unsampled is not None:
            scores.remove_files(written)
            runs.fail(scorer.run, f"keeping the sample failed: {unsampled}", slice_date)
            continue
        files[scorer.run.id] = written
    return files


def reconnect_if_dropped() -> None:
    """Scoring goes minutes without a query: a database connection dropped meanwhile (a
    restart, a failover) is replaced before the runs' bookkeeping. Django notices a dead
    connection only when a query fails, and then fails every query after it."""
    if connection.connection is not None and not connection.is_usable():
        connection.close()


def commit(scorers: list[Scorer], slice_date: date) -> list[ScoringRun]:
    """All runs of the slice in one Delta transaction; returns the runs that committed."""
    reconnect_if_dropped()
    files = keep_files(scorers, 0, slice_date)
    alive = []
    for scorer in scorers:
        if files.get(scorer.run.id):
            alive.append(scorer.run)
        elif scorer.run.id in files:
            runs.fail(scorer.run, f"slice {slice_date} has no rows", slice_date)
    if not alive:
        return []
    return commit_files(alive, files, alive[0].date, slice_date)


def commit_files(
    held: list[ScoringRun], files: dict[int, list[dict]], day: date, slice_date: date
) -> list[ScoringRun]:
    """Add the runs' written files to the table at once: each partition whole, or none."""
    if not held:
        return []
    try:
        scores.commit(
            day, [run.deployment_id for run in held], [f for r in held for f in files[r.id]]
        )
    except Exception as exc:  # S3 down or a conflicting commit: the runs are retried
        log.exception("commit of runs %s failed", [run.id for run in held])
        for run in held:
            scores.remove_files(files[run.id])
            runs.fail(run, f"committing the scores failed: {exc}", slice_date)
        return []
    for run in held:
        rows = sum(json.loads(f["stats"])["numRecords"] for f in files[run.id])
        runs.succeed(run, rows, slice_date)
    return held


def union(feature_lists) -> list[str]:
    """All features, each once, in the order first seen."""
    return list(dict.fromkeys(name for names in feature_lists for name in names))


class Heartbeat(threading.Thread):
    """Keeps the runs' lease alive while the batch works, from a thread of its own."""

    def __init__(self, held: list[ScoringRun]):
        super().__init__(daemon=True)
        self.held = held
        self.stopped = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopped.wait(settings.HEARTBEAT_SECONDS):
                try:
                    runs.heartbeat(self.held)
                except DatabaseError as exc:
                    # A dropped connection (a restart, a failover) must not end the heartbeat:
                    # tick would take the runs back while they still score. Closed, the
                    # connection is made again at the next beat.
                    log.warning("heartbeat of runs %s failed: %s", [r.id for r in self.held], exc)
                    close_old_connections()
        finally:
            close_old_connections()

    def __enter__(self) -> "Heartbeat":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stopped.set()
        self.join()
