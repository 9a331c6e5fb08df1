"""Timings of scoring/quality/metrics.py at the sizes the engine gives it.

Prints the best of a few repeats for: psi on 1M vs 1M scores; adversarial_auc on
20,000 rows x (50 numeric features + 1 categorical + score) per side, and 10 such
calls (one batch of 10 models); compare() end to end with 1M scores per side.

    .venv/bin/python bench/quality_bench.py
"""

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scoring.quality import metrics  # noqa: E402

THRESHOLDS = {
    "psi_warn": 0.1,
    "psi_alert": 0.25,
    "adversarial_warn": 0.6,
    "adversarial_alert": 0.65,
}


def best(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def sample(rng: np.random.Generator, rows: int, shift: float = 0.0) -> pd.DataFrame:
    frame = pd.DataFrame(rng.normal(size=(rows, 50)), columns=[f"f{i:02d}" for i in range(50)])
    frame["f00"] += shift
    frame["city"] = pd.Categorical(rng.choice(["a", "b", "c", "d", "e"], rows))
    frame["score"] = 1 / (1 + np.exp(-frame["f00"]))
    return frame


def main() -> None:
    rng = np.random.default_rng(0)
    baseline_scores = rng.beta(2, 5, 1_000_000)
    current_scores = rng.beta(2, 5, 1_000_000)
    baseline_sample, current_sample = sample(rng, 20_000), sample(rng, 20_000, shift=0.3)

    seconds = best(lambda: metrics.psi(baseline_scores, current_scores))
    print(f"psi, 1M vs 1M:                          {seconds * 1000:7.1f} ms")
    seconds = best(lambda: metrics.adversarial_auc(baseline_sample, current_sample))
    auc, stderr = metrics.adversarial_auc(baseline_sample, current_sample)
    print(
        f"adversarial_auc, 20k x 52 per side:     {seconds * 1000:7.1f} ms  (AUC {auc:.3f} ± {stderr:.4f})"
    )
    seconds = best(
        lambda: [
            metrics.adversarial_auc(baseline_sample, current_sample, seed=i) for i in range(10)
        ],
        repeats=3,
    )
    print(f"adversarial_auc x 10 models:            {seconds * 1000:7.1f} ms")
    baseline = {"kind": "run", "run_id": 1, "date": "2026-11-22", "rows": 1_000_000}
    seconds = best(
        lambda: metrics.compare(
            current_scores=current_scores,
            baseline_scores=baseline_scores,
            current_sample=current_sample,
            baseline_sample=baseline_sample,
            thresholds=THRESHOLDS,
            baseline=baseline,
        )
    )
    print(f"compare, 1M scores, 20k samples:        {seconds * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
