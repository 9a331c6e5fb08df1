"""Timings of the data-quality checks at the sizes the engine gives them.

The checks of a batch, per model, before and after the runs kept profiles of their scores
(scoring.quality.profiles) and shared adversarial validation (scoring.quality.adversarial):

- a fleet: `--models` runs (default 300) of `--rows` scores each (default 100,000), each
  with 10-30 features of one slice sample (20,000 rows x 200 columns, 20 categorical);
- a large batch: 10 runs x 1,000,000 scores (`--large 0` to skip).

"Before" is the check as it was at `--before` (a git revision, default the commit before
the profiles): its scoring/quality/metrics.py is loaded from git, and each run's two
partitions are read back from Parquet in memory (a lower bound of reading them from S3).
"After" is what the engine does now: while a run writes its scores, chunk by chunk, its
profile counts them (timed, as the check's share of the writing), then the check compares
two profiles and the slice samples, whose frames and columns' evidence the runs share.
The first day has only reference scores (10,000) as a baseline, the later day the run of
the day before and both slice samples. Prints milliseconds per model and per batch, and
the adversarial validation's share alone. The database and S3 (one query for all the runs'
baselines, one update of their results, each slice's sample read once), which both ways
share, are left out.

    .venv/bin/python bench/quality_bench.py
    .venv/bin/python bench/quality_bench.py --models 1000 --rows 100000 --large 0
"""

import argparse
import importlib.util
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from scoring.quality import adversarial, metrics, profiles  # noqa: E402

THRESHOLDS = {
    "psi_warn": 0.1,
    "psi_alert": 0.25,
    "adversarial_warn": 0.6,
    "adversarial_alert": 0.65,
}
SAMPLE_ROWS = 20_000
CHUNK_ROWS = 100_000
REFERENCE_ROWS = 10_000


def previous_metrics(revision: str):
    """scoring/quality/metrics.py as it was at `revision`, as a module."""
    source = subprocess.run(
        ["git", "show", f"{revision}:scoring/quality/metrics.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="quality-bench-")) / "metrics_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("metrics_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def slice_sample(rng: np.random.Generator, shift: float) -> pd.DataFrame:
    frame = pd.DataFrame(
        rng.normal(size=(SAMPLE_ROWS, 180)), columns=[f"n{i:03d}" for i in range(180)]
    )
    frame["n000"] += shift
    for i in range(20):
        frame[f"c{i:02d}"] = pd.Categorical(rng.choice(list("abcdefgh"), SAMPLE_ROWS))
    return frame


def fleet(rng: np.random.Generator, models: int, rows: int) -> dict:
    """Each model's features, its scores on both days, and both days' slice samples with
    a score column per model."""
    columns = [f"n{i:03d}" for i in range(180)] + [f"c{i:02d}" for i in range(20)]
    features = [
        list(rng.choice(columns, rng.integers(10, 31), replace=False)) for _ in range(models)
    ]
    yesterday, today = (
        pd.concat(
            [
                slice_sample(rng, 0.2 * day),
                pd.DataFrame(
                    {f"score:{m}": rng.beta(2 + 0.2 * day, 5, SAMPLE_ROWS) for m in range(models)}
                ),
            ],
            axis=1,
        )
        for day in (0, 1)
    )
    return {
        "features": features,
        "rows": rows,
        "samples": (yesterday, today),
        "reference": rng.beta(2, 5, REFERENCE_ROWS),
    }


def run_scores(data: dict, model: int) -> tuple[np.ndarray, np.ndarray]:
    """A model's scores of the day before and of today, made when needed: a fleet's
    would not fit in memory."""
    rng = np.random.default_rng(model)
    return rng.beta(2, 5, data["rows"]), rng.beta(2.2, 5, data["rows"])


def parquet_bytes(values: np.ndarray) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table({"score": values}), sink)
    return sink.getvalue()


def read_back(data: bytes) -> np.ndarray:
    return pq.read_table(io.BytesIO(data)).column("score").to_numpy()


def run_frame(sample: pd.DataFrame, features: list[str], model: int) -> pd.DataFrame:
    """The old per-run frame of a slice sample: its features and its score."""
    return sample[[*features, f"score:{model}"]].rename(columns={f"score:{model}": "score"})


def before(old, data: dict, later: bool) -> float:
    """Seconds of the old checks of every model."""
    yesterday, today = data["samples"]
    reference = parquet_bytes(data["reference"])
    drift = {}
    seconds = 0.0
    for model, features in enumerate(data["features"]):
        stored = [parquet_bytes(scores) for scores in run_scores(data, model)]
        started = time.perf_counter()
        current_scores = read_back(stored[1])
        if later:
            old.compare(
                current_scores=current_scores,
                baseline_scores=read_back(stored[0]),
                current_sample=run_frame(today, features, model),
                baseline_sample=run_frame(yesterday, features, model),
                thresholds=THRESHOLDS,
                baseline={"kind": "run", "run_id": 1, "date": "2026-11-22", "rows": 1},
                known_drift=drift,
            )
        else:
            old.compare(
                current_scores=current_scores,
                baseline_scores=read_back(reference),
                current_sample=None,
                baseline_sample=None,
                thresholds=THRESHOLDS,
                baseline={"kind": "reference_scores", "rows": REFERENCE_ROWS},
            )
        seconds += time.perf_counter() - started
    return seconds


def profiled(scores: np.ndarray, against) -> dict:
    """The profile a run counts while it writes its scores chunk by chunk, summed up."""
    profile = profiles.ScoreProfile(against)
    for start in range(0, scores.size, CHUNK_ROWS):
        profile.add(pa.array(scores[start : start + CHUNK_ROWS]))
    return profile.summary()


def after(data: dict, later: bool) -> tuple[float, float]:
    """Seconds of (profiling while writing, the checks) of every model."""
    yesterday, today = data["samples"]
    reference = parquet_bytes(data["reference"])
    reference_edges = profiles.decile_edges(data["reference"]).tolist()
    stored_yesterday, kept, writing = [], [], 0.0
    for model in range(len(data["features"])):
        scores_before, scores = run_scores(data, model)
        stored_yesterday.append(profiled(scores_before, None))
        edges = stored_yesterday[model]["deciles"]["edges"] if later else reference_edges
        started = time.perf_counter()
        kept.append(profiled(scores, edges))
        writing += time.perf_counter() - started

    started = time.perf_counter()
    shared = None
    if later:  # the slice samples' frames and pair, made once for all the runs
        frames = [
            sample[[c for c in sample.columns if not c.startswith("score:")]]
            for sample in (yesterday, today)
        ]
        shared = metrics.Samples(adversarial.SamplePair(*frames), [], None)
    for model, features in enumerate(data["features"]):
        if later:
            samples = metrics.Samples(
                shared.pair,
                features,
                (yesterday[f"score:{model}"].to_numpy(), today[f"score:{model}"].to_numpy()),
                shared.drift,
            )
            metrics.compare_profiles(
                current_profile=kept[model],
                baseline_profile=stored_yesterday[model],
                samples=samples,
                thresholds=THRESHOLDS,
                baseline={"kind": "run", "run_id": 1, "date": "2026-11-22", "rows": 1},
            )
        else:
            metrics.compare_profiles(
                current_profile=kept[model],
                baseline_profile=profiles.summarize(read_back(reference)),
                samples=None,
                thresholds=THRESHOLDS,
                baseline={"kind": "reference_scores", "rows": REFERENCE_ROWS},
            )
    return writing, time.perf_counter() - started


def adversarial_only(old, data: dict) -> tuple[float, float]:
    """Seconds per model of the adversarial validation alone, before (a classifier per
    model, over its own frames) and after (the slice's columns shared)."""
    yesterday, today = data["samples"]
    started = time.perf_counter()
    for model, features in enumerate(data["features"]):
        old.adversarial_auc(
            run_frame(yesterday, features, model), run_frame(today, features, model)
        )
    seconds_before = time.perf_counter() - started
    started = time.perf_counter()
    frames = [
        sample[[c for c in sample.columns if not c.startswith("score:")]]
        for sample in (yesterday, today)
    ]
    pair = adversarial.SamplePair(*frames)
    for model, features in enumerate(data["features"]):
        scores = yesterday[f"score:{model}"].to_numpy(), today[f"score:{model}"].to_numpy()
        pair.auc(features, scores)
    models = len(data["features"])
    return seconds_before / models, (time.perf_counter() - started) / models


def measure(old, models: int, rows: int) -> None:
    data = fleet(np.random.default_rng(0), models, rows)
    print(f"{models} models x {rows:,} scores, slice samples {SAMPLE_ROWS:,} x 200 columns")
    for later in (False, True):
        day = "later day" if later else "first day"
        seconds_before = before(old, data, later)
        writing, checking = after(data, later)
        total = writing + checking
        print(
            f"  {day}: before {seconds_before / models * 1000:7.1f} ms/model "
            f"({seconds_before:6.2f} s);  after {total / models * 1000:6.1f} ms/model "
            f"({total:5.2f} s: profiling while writing {writing:5.2f} s, check {checking:5.2f} s)"
            f";  {seconds_before / total:5.1f}x",
            flush=True,
        )
    per_model_before, per_model_after = adversarial_only(old, data)
    print(
        f"  of which adversarial validation: before {per_model_before * 1000:6.1f} ms/model, "
        f"after {per_model_after * 1000:5.1f} ms/model (the slice's columns shared)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=300)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--large", type=int, default=1_000_000, help="rows of the 10-model batch")
    parser.add_argument("--before", default="d7a3ad3", help="git revision of the old checks")
    args = parser.parse_args()
    old = previous_metrics(args.before)
    measure(old, args.models, args.rows)
    if args.large:
        measure(old, 10, args.large)


if __name__ == "__main__":
    main()
