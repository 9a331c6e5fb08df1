"""A challenger dropped beside a champion: scored in the same batch from the same read of the
slice, into the same scores table under its own role."""

import shutil
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from scoring.models import Comparison, Role
from scoring.quality import comparison
from scoring.runs import dispatch
from tests.factories import features, packages
from tests.flows import (
    a_split_challenger_and_its_champion,
    deploy,
    log_lines,
    slice_frame,
    table_rows,
    wait_for_runs,
)

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_challenger_scores_beside_its_champion_from_one_read_of_the_slice(
    owner, validated, worker, bucket, feature_table, state_dir
):
    day = date.today() + timedelta(days=77)  # a slice of its own: the worker's log names it
    features.write_feature_slice(feature_table, day, rows=500)
    champion, challenger = packages.function_package(), packages.sklearn_package()
    deployment = deploy(owner, champion, "spend", validated)
    deploy(owner, challenger, "spend", validated, role="challenger")
    deployment.refresh_from_db()
    assert (deployment.champion.number, deployment.challenger.number) == (1, 2)

    try:
        dispatch.score_now(deployment, day)
        finished = wait_for_runs([deployment.id])
        frame = slice_frame(feature_table, day).sort_values("entity_id")
    finally:
        shutil.rmtree(feature_table / f"dt={day.isoformat()}")

    assert sorted((run.role, run.version.number, run.status) for run in finished) == [
        ("challenger", 2, "succeeded"),
        ("champion", 1, "succeeded"),
    ], [run.error for run in finished]
    assert len({run.batch_id for run in finished}) == 1
    # One pipeline read the slice for both runs: it logs the slice once, with both.
    logs = [state_dir / "worker.log"]
    assert log_lines(logs, f"slice {day}, 2 runs in") == 1
    assert log_lines(logs, f"slice {day}, 1 runs in") == 0
    rows = table_rows(deployment.id, day).sort("entity_id")
    expected = {
        Role.CHAMPION: champion["model"](frame[["monthly_spend"]]),
        Role.CHALLENGER: challenger["model"].predict_proba(frame[features.FEATURES])[:, 1],
    }
    for role, scores in expected.items():
        part = rows.filter(rows["role"] == role)
        assert part["entity_id"].to_list() == frame["entity_id"].tolist()
        assert part["model_version"].unique().to_list() == [1 if role == Role.CHAMPION else 2]
        np.testing.assert_allclose(part["score"].to_numpy(), np.asarray(scores), rtol=1e-9)

    compared = Comparison.objects.get(deployment=deployment, date=day)
    assert compared.metrics == pytest.approx(
        by_hand(expected[Role.CHAMPION], expected[Role.CHALLENGER])
    )


def test_a_ten_percent_challenger_and_its_champion_split_the_slice_the_same_way_each_day(
    owner, validated, worker, bucket, feature_table, mailbox
):
    a_split_challenger_and_its_champion(owner, validated, feature_table, mailbox)


def by_hand(champion: np.ndarray, challenger: np.ndarray) -> dict:
    """The comparison of two versions' scores of the same entities, computed the plain way."""
    edges = np.unique(np.quantile(champion, np.linspace(0, 1, 11))[1:-1])
    shares = [
        np.bincount(np.searchsorted(edges, side, side="left"), minlength=len(edges) + 1) / len(side)
        for side in (champion, challenger)
    ]
    expected, actual = (np.where(s > 0, s, 1e-4) for s in shares)

    def top(values, share):
        return set(np.argsort(-values)[: max(1, int(len(values) * share))])

    def decile(values):
        return pd.qcut(pd.Series(values).rank(method="first"), 10, labels=False).to_numpy()

    return {
        "champion_rows": len(champion),
        "challenger_rows": len(challenger),
        "shared_rows": len(champion),
        "psi": float(np.sum((actual - expected) * np.log(actual / expected))),
        "spearman": stats.spearmanr(champion, challenger).statistic,
        "top_decile_overlap": len(top(champion, 0.1) & top(challenger, 0.1))
        / (len(champion) // 10),
        "top_percent_overlap": len(top(champion, 0.01) & top(challenger, 0.01))
        / max(1, len(champion) // 100),
        "decile_moved_2": float(np.mean(np.abs(decile(champion) - decile(challenger)) >= 2)),
    }


def test_the_comparison_equals_the_plain_computation_on_skewed_scores():
    rng = np.random.default_rng(3)
    champion = rng.beta(2, 8, 2000)
    challenger = np.clip(champion + rng.normal(0, 0.02, 2000), 0, 1)
    ids = np.arange(2000)
    shuffled = rng.permutation(2000)  # matched by entity id, not by position

    found = comparison.compare(
        champion_ids=ids,
        champion_scores=champion,
        challenger_ids=ids[shuffled],
        challenger_scores=challenger[shuffled],
    )

    assert found == pytest.approx(by_hand(champion, challenger))
    assert 0 < found["decile_moved_2"] < 0.2 and found["spearman"] > 0.8


def test_without_a_shared_entity_only_the_distributions_are_compared():
    found = comparison.compare(
        champion_ids=np.arange(0, 90),
        champion_scores=np.linspace(0, 1, 90),
        challenger_ids=np.arange(90, 100),
        challenger_scores=np.linspace(0, 1, 10),
    )

    assert found["shared_rows"] == 0 and found["psi"] < 0.1
    assert [found[k] for k in ("spearman", "top_decile_overlap", "decile_moved_2")] == [None] * 3
