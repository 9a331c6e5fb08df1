"""Adversarial validation shared by the runs of a slice (scoring.quality.adversarial)
agrees with the gradient-boosted classifier it replaced."""

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from scoring.quality import adversarial


def frame(rng: np.random.Generator, rows: int, shift: float = 0.0, city=None) -> pd.DataFrame:
    data = pd.DataFrame(rng.normal(size=(rows, 20)), columns=[f"x{i}" for i in range(20)])
    data["x3"] += shift
    data["city"] = pd.Categorical(rng.choice(["a", "b", "c"], rows, p=city or [0.5, 0.3, 0.2]))
    data["score"] = 1 / (1 + np.exp(-data["x3"] - data["x7"]))
    return data


def boosted_auc(baseline: pd.DataFrame, current: pd.DataFrame, rows: int = 5000) -> float:
    """The classifier the checks used before: 20 trees of 8 leaves, 2 folds, on 5,000
    random rows a side (categories as codes)."""
    rng = np.random.default_rng(0)
    b = baseline.iloc[np.sort(rng.choice(len(baseline), rows, replace=False))]
    c = current.iloc[np.sort(rng.choice(len(current), rows, replace=False))]
    both = pd.concat([b, c], ignore_index=True)
    both["city"] = both["city"].cat.codes
    X, y = both.to_numpy(dtype=float), np.repeat([0, 1], rows)
    predicted = np.empty(2 * rows)
    for train, test in StratifiedKFold(2, shuffle=True, random_state=0).split(X, y):
        model = HistGradientBoostingClassifier(
            max_iter=20, max_leaf_nodes=8, learning_rate=0.2, early_stopping=False, random_state=0
        )
        model.fit(X[train], y[train])
        predicted[test] = model.predict_proba(X[test])[:, 1]
    return float(roc_auc_score(y, predicted))


@pytest.mark.parametrize(
    "drift",
    [
        {},  # no drift
        {"shift": 0.15},  # below the warning
        {"shift": 0.4},  # around the warning
        {"shift": 1.0},  # an alert
        {"city": [0.2, 0.3, 0.5]},  # a category's mix
    ],
)
def test_the_shared_classifier_agrees_with_the_boosted_one(drift):
    rng = np.random.default_rng(5)
    baseline, current = frame(rng, 20_000), frame(rng, 20_000, **drift)
    pair = adversarial.SamplePair(baseline.drop(columns="score"), current.drop(columns="score"))
    columns = [c for c in baseline.columns if c != "score"]
    auc, stderr = pair.auc(columns, (baseline["score"].to_numpy(), current["score"].to_numpy()))
    assert auc == pytest.approx(boosted_auc(baseline, current), abs=0.03)
    assert 0.004 < stderr < 0.007


def test_models_of_a_slice_share_each_columns_evidence():
    rng = np.random.default_rng(6)
    pair = adversarial.SamplePair(frame(rng, 3000), frame(rng, 3000, shift=1.0))
    pair.auc(["x1", "x3"])
    pair.auc(["x3", "x4"])
    assert sorted(pair.known) == ["x1", "x3", "x4"]
    assert pair.auc(["x3"])[0] > 0.7 > pair.auc(["x1", "x4"])[0]


def test_the_auc_counts_ties_as_half_as_roc_auc_score_does():
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 6, 2000).astype(float)  # sums of bins' evidence tie often
    scores[1000:] += rng.integers(0, 2, 1000)
    expected = roc_auc_score(np.repeat([0, 1], 1000), scores)
    assert adversarial.mann_whitney_auc(scores, 1000) == pytest.approx(expected, abs=1e-12)
