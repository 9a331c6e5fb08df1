"""The fleet bench's packages, made as notebooks make them: 60% CatBoost (100 trees, depth
6, 10-30 features, some categorical), 30% scikit-learn pipelines (a ColumnTransformer with
a LogisticRegression or a small tree), 10% plain functions of a DataFrame.

Model k of each kind always has the same features and seed, so `--models 100` takes the
first 60, 30 and 10 of the 1,000 and a cache made for more models serves fewer. Packages
are written once into the work folder and reused by later runs.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from bench.engine_data import CATEGORICAL, NUMERIC

KINDS = (("catboost", 0.6), ("sklearn", 0.3), ("function", 0.1))
TRAINING_ROWS = 5_000

# A notebook cell: the function lives in __main__, so dill carries it by value (the sandbox
# cannot import the bench, just as it cannot import a notebook).
FUNCTION_CELL = """
import numpy as np

def make_score(columns, weights, bias):
    def score(frame):
        z = frame[columns].to_numpy(dtype="float64", na_value=0.0) @ weights + bias
        return 1.0 / (1.0 + np.exp(-z))
    return score
"""


@dataclass(frozen=True)
class Spec:
    """One package of the fleet: its kind, its index within the kind, its features."""

    kind: str
    index: int
    features: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.index:04d}"


def counts(models: int) -> dict[str, int]:
    """How many of each kind make `models`, in the fleet's proportions."""
    found = {kind: int(models * share) for kind, share in KINDS}
    found["catboost"] += models - sum(found.values())
    return found


def specs(models: int) -> list[Spec]:
    made = []
    for number, (kind, count) in enumerate(counts(models).items()):
        for index in range(count):
            rng = np.random.default_rng([number, index])
            size = int(rng.integers(10, 31))
            categorical = (
                int(rng.integers(1, 5)) if kind != "function" and rng.random() < 0.4 else 0
            )
            features = list(rng.choice(NUMERIC, size - categorical, replace=False))
            features += list(rng.choice(CATEGORICAL, categorical, replace=False))
            made.append(Spec(kind, index, tuple(str(f) for f in features)))
    return made


def packages(folder: Path, slice_path: Path, models: int) -> list[tuple[Spec, Path]]:
    """Each spec's package file, made (and kept in `folder`) if it is not there yet."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted = [(spec, folder / f"{spec.name}.dill") for spec in specs(models)]
    missing = [(spec, path) for spec, path in wanted if not path.exists()]
    if missing:
        print(f"making {len(missing)} packages ...", flush=True)
        sample = pq.read_table(slice_path).slice(0, TRAINING_ROWS).to_pandas()
        for spec, path in missing:
            make_package(spec, sample, path)
    return wanted


def make_package(spec: Spec, sample, path: Path) -> None:
    from scoring.packages.contract import save_package

    frame = sample[list(spec.features)]
    target = target_for(spec, frame)
    model = {"catboost": catboost_model, "sklearn": sklearn_model, "function": function_model}[
        spec.kind
    ](spec, frame, target)
    partial = path.with_suffix(".partial")
    save_package(str(partial), model, list(spec.features), params={"positive_class": 1})
    partial.rename(path)  # a run stopped midway leaves no half package behind


def target_for(spec: Spec, frame) -> np.ndarray:
    """A target the model's own features explain, with noise: the trees have work to do."""
    rng = np.random.default_rng(spec.index)
    numeric = [c for c in spec.features if c in NUMERIC]
    signal = frame[numeric[0]].to_numpy() + 0.5 * frame[numeric[1]].to_numpy()
    noisy = signal + rng.normal(0, 1, len(frame))
    return (noisy > np.median(noisy)).astype(int)


def catboost_model(spec: Spec, frame, target):
    from catboost import CatBoostClassifier

    model = CatBoostClassifier(
        iterations=100,
        depth=6,
        verbose=False,
        random_seed=spec.index,
        allow_writing_files=False,
        thread_count=1,  # the machine is shared; a notebook would take every core
        cat_features=[c for c in spec.features if c in CATEGORICAL],
    )
    return model.fit(frame, target)


def sklearn_model(spec: Spec, frame, target):
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    numeric = [c for c in spec.features if c in NUMERIC]
    categorical = [c for c in spec.features if c in CATEGORICAL]
    steps = [("numeric", StandardScaler(), numeric)]
    if categorical:
        steps.append(("categorical", OneHotEncoder(handle_unknown="ignore"), categorical))
    classifier = (
        LogisticRegression(max_iter=200)
        if spec.index % 2 == 0
        else DecisionTreeClassifier(max_depth=5, random_state=spec.index)
    )
    pipeline = Pipeline([("columns", ColumnTransformer(steps)), ("classifier", classifier)])
    return pipeline.fit(frame, target)


def function_model(spec: Spec, frame, target):
    namespace: dict = {"__name__": "__main__"}
    exec(FUNCTION_CELL, namespace)
    rng = np.random.default_rng(spec.index)
    weights = rng.normal(0, 0.2, len(spec.features))
    return namespace["make_score"](list(spec.features), weights, -float(weights.sum()))
