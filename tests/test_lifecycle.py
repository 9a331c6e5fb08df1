"""scoring/runs/lifecycle.py: runs move only along ScoringRun.TRANSITIONS."""

from datetime import date

import pytest

from scoring.models import ScoringRun
from scoring.runs import lifecycle
from tests.factories.runs import make_models

pytestmark = pytest.mark.django_db


def a_run(owner, status: str) -> ScoringRun:
    [deployment] = make_models(owner, 1)
    return ScoringRun.objects.create(
        deployment=deployment,
        version=deployment.versions.get(),
        date=date(2026, 12, 1),
        status=status,
    )


@pytest.mark.parametrize(
    ("start", "to", "moves"),
    [
        ("queued", "running", True),
        ("running", "succeeded", True),
        ("running", "retrying", True),
        ("retrying", "queued", True),
        ("failed", "queued", True),
        ("succeeded", "queued", False),  # committed scores are never scored again
        ("succeeded", "failed", False),
        ("queued", "succeeded", False),  # only a worker that claimed it finishes a run
        ("retrying", "running", False),  # a retry is queued first, then claimed
    ],
)
def test_a_run_moves_only_along_the_allowed_transitions(owner, start, to, moves):
    run = a_run(owner, start)

    moved = lifecycle.move(ScoringRun.objects.filter(id=run.id), to, error="moved")

    run.refresh_from_db()
    assert (moved, run.status) == ((1, to) if moves else (0, start))


def test_every_status_has_its_transitions_written():
    assert set(ScoringRun.TRANSITIONS) == set(ScoringRun.Status)
    assert all(
        set(targets) <= set(ScoringRun.Status) for targets in ScoringRun.TRANSITIONS.values()
    )
