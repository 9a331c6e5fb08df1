"""The demo: a synthetic retail-churn feature table and a CatBoost package trained on it.

The table is hive-partitioned Parquet, one folder per daily slice
(`dt=YYYY-MM-DD/part-0.parquet`), ~50 numeric and 4 categorical features per
customer, varying a little from day to day as real behaviour does — until a
promotion lifts spending and calls on the last two days, which the data-quality
checks of the demo model flag.

Beside it, a labels table (the ground truth, LABELS_URI): whether each customer churned,
known LABEL_LAG_DAYS after the slice, so the demo model's oldest runs have matured and its
page draws their Gini.
"""

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

CATEGORICAL = {
    "region": ["north", "south", "east", "west", "central"],
    "plan": ["basic", "plus", "premium", "family"],
    "channel": ["web", "store", "partner"],
    "device": ["android", "ios", "other"],
}
# Days ago -> how much a promotion lifted spending and calls: yesterday a little, today a lot.
PROMOTION = {1: 0.15, 0: 0.8}
LABEL_LAG_DAYS = 3
TARGET = "churned"
# 10 numeric and 3 categorical columns of the ~54 in the table.
MODEL_FEATURES = [
    *[
        "age",
        "tenure_months",
        "monthly_spend",
        "calls_last_30d",
        "late_payments",
        "support_tickets",
    ],
    *[f"num_{i:02d}" for i in range(4)],
    *["region", "plan", "channel"],
]


def customers_base(customers: int, seed: int = 7) -> pd.DataFrame:
    """What stays fixed per customer across slices."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"entity_id": np.arange(1, customers + 1, dtype="int64")})
    frame["age"] = rng.integers(18, 85, customers).astype("float32")
    frame["tenure_months"] = rng.integers(0, 180, customers).astype("float32")
    for name, values in CATEGORICAL.items():
        frame[name] = pd.Categorical(rng.choice(values, customers), categories=values)
    return frame


def daily_slice(base: pd.DataFrame, day: date, drift: float = 0.0) -> pd.DataFrame:
    """One day's features: behaviour varies per day, `drift` shifts spend and calls."""
    rng = np.random.default_rng(day.toordinal())
    n = len(base)
    frame = base.copy()
    frame["tenure_months"] = frame["tenure_months"] + (day.toordinal() % 30) / 30
    frame["monthly_spend"] = np.round(rng.gamma(2.0, 30.0 * (1 + drift), n), 2).astype("float32")
    frame["calls_last_30d"] = rng.poisson(12 * (1 + drift), n).astype("float32")
    frame["late_payments"] = rng.poisson(0.4, n).astype("float32")
    frame["support_tickets"] = rng.poisson(0.8, n).astype("float32")
    for i in range(44):
        # Rounded to a tenth so slices compress like real, low-precision features do.
        frame[f"num_{i:02d}"] = np.round(rng.normal(i % 7, 1 + i % 3, n), 1).astype("float32")
    return frame


def churn_labels(frame: pd.DataFrame, seed: int = 11) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logit = (
        -2.0
        + 0.5 * frame["late_payments"]
        - 0.015 * frame["tenure_months"]
        + 0.008 * frame["monthly_spend"]
        + 0.3 * (frame["plan"] == "basic")
        + 0.2 * (frame["channel"] == "partner")
        + 0.1 * frame["num_00"]
    )
    return (rng.random(len(frame)) < 1 / (1 + np.exp(-logit.to_numpy()))).astype("int8")


def make_feature_table(
    root: Path, customers: int = 100_000, days: int = 30, today: date | None = None
) -> list[date]:
    """Write the slices that are missing; returns the dates of all slices."""
    today = today or date.today()
    base = customers_base(customers)
    dates = [today - timedelta(days=offset) for offset in range(days - 1, -1, -1)]
    for day in dates:
        path = Path(root) / f"dt={day.isoformat()}" / "part-0.parquet"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        drift = PROMOTION.get((today - day).days, 0.0)
        daily_slice(base, day, drift).to_parquet(path, index=False, row_group_size=50_000)
    return dates


def make_labels_table(
    root: Path, customers: int = 100_000, days: int = 30, today: date | None = None
) -> list[date]:
    """Write the outcomes known by today (the slices at least LABEL_LAG_DAYS old) that are
    missing: `entity_id` and `churned` per customer; returns their dates."""
    today = today or date.today()
    base = customers_base(customers)
    dates = [today - timedelta(days=offset) for offset in range(days - 1, LABEL_LAG_DAYS - 1, -1)]
    for day in dates:
        path = Path(root) / f"dt={day.isoformat()}" / "part-0.parquet"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        frame = daily_slice(base, day, PROMOTION.get((today - day).days, 0.0))
        labels = pd.DataFrame(
            {"entity_id": frame["entity_id"], TARGET: churn_labels(frame, seed=day.toordinal())}
        )
        labels.to_parquet(path, index=False)
    return dates


RETENTION_FEATURES = [
    *["age", "tenure_months", "monthly_spend", "support_tickets"],
    *[f"num_{i:02d}" for i in range(4, 12)],
    *["plan", "device"],
]


def make_demo_package(
    path: Path,
    name: str = "churn-demo",
    features: list[str] = MODEL_FEATURES,
    customers: int = 20_000,
) -> dict:
    """Train a CatBoost churn model on a demo slice and save it as a package file."""
    from catboost import CatBoostClassifier
    from sklearn.metrics import roc_auc_score

    from scoring.packages.contract import save_package

    train = daily_slice(customers_base(customers, seed=99), date.today() - timedelta(days=60))
    labels = churn_labels(train)
    model = CatBoostClassifier(
        iterations=200,
        depth=6,
        learning_rate=0.1,
        verbose=False,
        random_seed=0,
        cat_features=[c for c in features if c in CATEGORICAL],
        allow_writing_files=False,
    )
    model.fit(train[features], labels)
    scores = model.predict_proba(train[features])[:, 1]
    # The Gini on an out-of-time sample: what the ground-truth checks expect of it.
    oot = daily_slice(customers_base(customers, seed=98), date.today() - timedelta(days=45))
    oot_auc = roc_auc_score(churn_labels(oot, seed=5), model.predict_proba(oot[features])[:, 1])
    return save_package(
        str(path),
        model,
        features,
        name=name,
        schedule="daily",
        params={"positive_class": 1, "target": TARGET, "label_lag_days": LABEL_LAG_DAYS},
        meta={
            "author": "demo",
            "algorithm": "CatBoost 200 trees, depth 6",
            "training_rows": customers,
            "target": "churn in 30 days",
            "gini_oot": round(2 * oot_auc - 1, 3),
        },
        reference_scores=np.round(scores, 6).tolist(),
    )
