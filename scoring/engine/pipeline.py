"""Scoring a unit's rows chunk by chunk with the worker's bounded pool of sandboxes.

A unit is some runs (a shard of a batch) and some rows (a slice, or a part of it). Three
things go on at once: a reading thread decodes the next chunk and writes it once as an
Arrow file in shared memory; the pool's sandboxes take turns on the current chunk, each
scoring its models (several of one owner) one after the other; writing threads stream the
scores of the chunk before into each run's file of the scores table.

When the unit's owners fit in the pool, each sandbox loads its models once and serves
every chunk; otherwise the sandboxes take turns: each loads its models, scores the chunk
and makes room for the next (scoring.engine.pool). How the sandboxes take a chunk, and how
a model fails alone, is scoring.engine.chunk_scoring's.
"""

import contextlib
import logging
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from datetime import date

import pyarrow as pa
from django.conf import settings
from django.utils import timezone

from scoring.engine import environments, features, package_cache, pool, scores, traffic
from scoring.engine.chunk_scoring import (
    ChunkScoring,
    Group,
    ReadAhead,
    Scorer,
    union,
    write_chunk,
)
from scoring.engine.limits import sandbox_limits
from scoring.engine.timing import Stopwatch
from scoring.models import ScoringRun
from scoring.quality import assessment, profiles, samples
from scoring.runs import lifecycle
from scoring.sandbox import scratch
from scoring.sandbox.environments import Environment

log = logging.getLogger(__name__)
WRITING_THREADS = 8  # encoding releases the GIL; the last chunk's also wait on S3 uploads


class SlicePipeline(ChunkScoring):
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
        self.pool = settings.SANDBOX_POOL
        super().__init__(slice_date, stack, sandbox_limits(), pool.busy_limit(self.pool))
        self.source = source
        self.clock = clock
        self.part_index = part_index
        self.part = part

    def fail(self, run: ScoringRun, error: str) -> None:
        lifecycle.fail(run, error, self.slice_date)

    def environment(self, requirements: tuple[str, ...]) -> Environment | None:
        return environments.prepare(list(requirements))

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
        # A sandbox serves one owner's models that pin the same libraries (one environment).
        waves = pool.waves(alive, self.pool, owner=lambda s: (s.run.deployment.owner_key, pins(s)))
        groups = [Group(scorers, pins(scorers[0])) for wave in waves for scorers in wave]
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
        chunk_dir = self.stack.enter_context(scratch.folder("chunk", settings.CHUNK_DIR or None))
        self.stack.callback(self.close_all, groups)
        scorers = [s for group in groups for s in group.scorers]
        columns = [
            self.source.id_column,
            *union(s.run.version.package["features"] for s in scorers),
        ]
        chunk_rows = min(
            s.run.version.package["params"].get("chunk_rows", settings.CHUNK_ROWS) for s in scorers
        )
        batches = self.source.batches(self.slice_date, columns, chunk_rows, part=self.part)
        # The reading thread also writes each chunk to shared memory, and writing threads
        # take the scores to S3: the worker's own thread only passes chunks and scores
        # between them and the sandboxes, so the sandboxes never wait for it.
        chunks = ReadAhead(
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
                    writing = self.write(chunk, results, scored_at, writes, chunks.ended())
                if writing is not None:
                    self.settle(writing)
        except (features.FeatureSourceError, OSError) as exc:
            for scorer in scorers:
                if not scorer.failed:
                    self.drop(scorer, f"reading slice {self.slice_date} failed: {exc}")
        finally:
            chunks.close()

    def write(self, chunk: pa.RecordBatch, results: dict, scored_at, writes: Executor, last: bool):
        """Hand the chunk's scores to the writing threads: each run's to its file, side by
        side (Parquet encoding and S3 uploads release the GIL), finished after the `last`
        chunk; and the rows to the sample."""
        sides = traffic.ChunkSides(chunk.column(0))
        written = {
            scorer: writes.submit(scorer.write, sides, values, scored_at, last)
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


def pins(scorer: Scorer) -> tuple[str, ...]:
    """The libraries the run's package pins, as validation read them."""
    return tuple(scorer.run.version.package.get("requirements") or ())
