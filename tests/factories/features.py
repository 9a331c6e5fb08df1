"""Feature data: a table of customers, daily slices of it, and churn labels for training."""

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

NUMERIC = ["age", "tenure_months", "monthly_spend", "calls_last_30d", "late_payments"]
CATEGORICAL = ["region", "plan"]
FEATURES = NUMERIC + CATEGORICAL
REGIONS = ["north", "south", "east", "west"]
PLANS = ["basic", "plus", "premium"]


def feature_frame(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "entity_id": np.arange(rows, dtype="int64"),
            "age": rng.integers(18, 80, rows).astype("float64"),
            "tenure_months": rng.integers(0, 120, rows).astype("float64"),
            "monthly_spend": rng.gamma(2.0, 30.0, rows),
            "calls_last_30d": rng.poisson(12, rows).astype("float64"),
            "late_payments": rng.poisson(0.5, rows).astype("float64"),
            "region": pd.Categorical(rng.choice(REGIONS, rows), categories=REGIONS),
            "plan": pd.Categorical(rng.choice(PLANS, rows), categories=PLANS),
        }
    )


def churn_labels(frame: pd.DataFrame, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logit = (
        -1.5
        + 0.04 * frame["late_payments"] * 10
        - 0.02 * frame["tenure_months"]
        + 0.01 * frame["monthly_spend"]
        + (frame["plan"] == "basic") * 0.8
    )
    return (rng.random(len(frame)) < 1 / (1 + np.exp(-logit))).astype(int)


def write_feature_slice(root: Path, day: date, rows: int) -> Path:
    folder = Path(root) / f"dt={day.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "part-0.parquet"
    feature_frame(rows, seed=day.toordinal()).to_parquet(path, index=False)
    return path
