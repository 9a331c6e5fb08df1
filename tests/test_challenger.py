"""A challenger dropped beside a champion: scored in the same batch from the same read of the
slice; a split challenger's rows go to the live table `scores` under its role, a shadow's to
`scores_shadow`."""

import shutil
from datetime import date, timedelta

import numpy as np
import pandas as pd
import polars as pl
import pytest
from django.utils import timezone
from scipy import stats

from scoring.engine import scores
from scoring.models import Comparison, Role, ScoringRun
from scoring.packages import roles
from scoring.quality import comparison
from scoring.runs import dispatch
from tests.factories import features, packages
from tests.flows import (
    a_split_challenger_and_its_champion,
    deploy,
    log_lines,
    slice_frame,
    table_rows,
    tick_until,
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
    rows = pl.concat(
        [table_rows(deployment.id, day), table_rows(deployment.id, day, scores.SHADOW_TABLE)]
    ).sort("entity_id")
    expected = {
        Role.CHAMPION: champion["model"](frame[["monthly_spend"]]),
        Role.CHALLENGER: challenger["model"].predict_proba(frame[features.FEATURES])[:, 1],
    }
    for role, predicted in expected.items():
        part = rows.filter(rows["role"] == role)
        assert part["entity_id"].to_list() == frame["entity_id"].tolist()
        assert part["model_version"].unique().to_list() == [1 if role == Role.CHAMPION else 2]
        np.testing.assert_allclose(part["score"].to_numpy(), np.asarray(predicted), rtol=1e-9)

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


def test_scores_holds_each_entity_once_through_challengers_retries_promotion_and_rollback(
    owner, validated, worker, bucket, feature_table, api
):
    """What a downstream job reads of `scores` by (dt, model_id): one row per entity of the
    slice, whatever the model's versions did. A: the champion and a shadow challenger, both
    retried, then a split challenger dropped after A was scored; B: the champion and the
    split challenger, both retried; C: the challenger promoted, then rolled back from."""
    a, b = date.today() - timedelta(days=1), date.today()
    c = date.today() + timedelta(days=91)  # a slice of its own
    features.write_feature_slice(feature_table, c, rows=500)
    deployment = deploy(owner, packages.function_package(), "live", validated)
    deploy(owner, packages.sklearn_package(), "live", validated, role="challenger")
    try:
        score(deployment, a)
        crash_after_commit(deployment, a)
        split = packages.sklearn_package(meta={"trial": "a 30 % split"})
        deploy(owner, split, "live", validated, role="challenger", share="0.3")
        deployment.refresh_from_db()
        score(deployment, a)  # the champion scored A whole: the new challenger is a shadow there
        score(deployment, b)
        crash_after_commit(deployment, b)
        v3 = deployment.challenger
        roles.request_change(deployment, v3, "better Gini on OOT", owner)
        deployment.refresh_from_db()
        score(deployment, c)
        roles.request_change(deployment, deployment.versions.get(number=1), "rollback", owner)
        deployment.refresh_from_db()
        score(deployment, c)
        slices = {day: set(slice_frame(feature_table, day)["entity_id"]) for day in (a, b, c)}
    finally:
        shutil.rmtree(feature_table / f"dt={c.isoformat()}")

    live = pl.read_delta(scores.table_uri(), storage_options=scores.storage_options())
    live = live.filter(pl.col("model_id") == deployment.id)
    counts = live.group_by("dt").agg(pl.len(), pl.col("entity_id").n_unique().alias("entities"))
    assert {row["dt"]: (row["len"], row["entities"]) for row in counts.to_dicts()} == {
        day.isoformat(): (len(slices[day]), len(slices[day])) for day in (a, b, c)
    }
    for day in (a, b, c):
        assert set(table_rows(deployment.id, day)["entity_id"]) == slices[day]
    versions = {
        (row["dt"], row["role"], row["model_version"])
        for row in live.select("dt", "role", "model_version").unique().to_dicts()
    }
    assert versions == {
        (a.isoformat(), "champion", 1),
        (b.isoformat(), "champion", 1),
        (b.isoformat(), "challenger", 3),
        (c.isoformat(), "champion", 1),
    }
    shadow = table_rows(deployment.id, a, scores.SHADOW_TABLE)
    assert (shadow.height, shadow["entity_id"].n_unique()) == (len(slices[a]), len(slices[a]))
    assert set(shadow["model_version"]) == {3}  # v3 replaced v2's shadow rows of A
    shadow_run = ScoringRun.objects.get(version=v3, date=a)
    assert Comparison.objects.filter(challenger_run=shadow_run).exists()
    download = api.get(f"/api/v1/runs/{shadow_run.id}/scores/?format=csv")
    assert len(b"".join(download.streaming_content).splitlines()) == 1 + len(slices[a])


def score(deployment, day: date) -> None:
    dispatch.score_now(deployment, day)
    finished = wait_for_runs([deployment.id])
    assert {run.status for run in finished} == {"succeeded"}, [run.error for run in finished]


def crash_after_commit(deployment, day: date) -> None:
    """The worker of the day's runs died after committing, before saying so: tick takes
    them back and they score again, replacing their own rows."""
    runs = ScoringRun.objects.filter(deployment=deployment, date=day)
    runs.update(status=ScoringRun.Status.RUNNING, heartbeat_at=timezone.now() - timedelta(days=1))
    tick_until([deployment.id])
    assert {run.attempts for run in runs} == {2}
