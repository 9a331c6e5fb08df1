"""Comparing a challenger with its champion for each day both scored, once both committed.

A day's pair is the latest committed run of each role for that model and date; each pair
is compared once (a unique constraint). Reading the two runs' scores is the engine's: it
passes `read_scores` (run -> its entity ids and scores) in.
"""

import logging
from collections.abc import Callable, Iterable

import numpy as np
import pyarrow as pa
from django.db import IntegrityError, transaction
from django.db.models import Q

from scoring.models import Comparison, Role, ScoringRun
from scoring.quality import comparison

log = logging.getLogger(__name__)
ScoresReader = Callable[[ScoringRun], Iterable[pa.RecordBatch]]


def compare_days(committed: list[ScoringRun], read_scores: ScoresReader) -> list[Comparison]:
    """The comparisons the newly `committed` runs complete (with each other, or with runs
    that succeeded before), made before they succeed: whoever sees them succeeded finds
    the comparison. A failure is logged, never raised: the scores are committed anyway."""
    made = []
    for deployment_id, day in sorted({(run.deployment_id, run.date) for run in committed}):
        try:
            found = compare_day(deployment_id, day, read_scores, [run.id for run in committed])
        except Exception:
            log.exception("comparing the challenger of model %s on %s failed", deployment_id, day)
            continue
        if found is not None:
            made.append(found)
    return made


def compare_day(
    deployment_id: int, day, read_scores: ScoresReader, committed: list[int]
) -> Comparison | None:
    succeeded = ScoringRun.objects.filter(
        Q(status=ScoringRun.Status.SUCCEEDED) | Q(id__in=committed),
        deployment_id=deployment_id,
        date=day,
    ).order_by("-id")
    champion = succeeded.filter(role=Role.CHAMPION).first()
    challenger = succeeded.filter(role=Role.CHALLENGER).first()
    if champion is None or challenger is None:
        return None
    pair = Comparison.objects.filter(champion_run=champion, challenger_run=challenger)
    if pair.exists():
        return None
    champion_ids, champion_scores = scores_of(read_scores, champion)
    challenger_ids, challenger_scores = scores_of(read_scores, challenger)
    metrics = comparison.compare(
        champion_ids=champion_ids,
        champion_scores=champion_scores,
        challenger_ids=challenger_ids,
        challenger_scores=challenger_scores,
    )
    try:
        with transaction.atomic():
            return Comparison.objects.create(
                deployment_id=deployment_id,
                date=day,
                champion_run=champion,
                challenger_run=challenger,
                metrics=metrics,
            )
    except IntegrityError:  # another worker compared them meanwhile
        return None


def scores_of(read_scores: ScoresReader, run: ScoringRun) -> tuple[np.ndarray, np.ndarray]:
    batches = list(read_scores(run))
    if not batches:
        return np.array([]), np.array([])
    table = pa.Table.from_batches(batches)
    return (
        table.column("entity_id").to_numpy(zero_copy_only=False),
        table.column("score").to_numpy(zero_copy_only=False),
    )
