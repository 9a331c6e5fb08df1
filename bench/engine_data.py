"""The engine bench's realistic batch: a slice of ROWS rows x 200 columns (180 numeric, 20
string categorical) and 10 CatBoost models whose features together span ~120 of them."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

NUMERIC = [f"n{i:03d}" for i in range(180)]
CATEGORICAL = [f"c{i:02d}" for i in range(20)]
MODELS = 10
ROW_GROUP = 100_000


def build_slice(folder: Path, rows: int) -> None:
    """Write the slice row group by row group, so building 4M rows needs little memory."""
    rng = np.random.default_rng(0)
    levels = {
        c: np.array([f"{c}_v{k}" for k in range(5 + i * 3)]) for i, c in enumerate(CATEGORICAL)
    }
    folder.mkdir(parents=True, exist_ok=True)
    writer = None
    for start in range(0, rows, ROW_GROUP):
        n = min(ROW_GROUP, rows - start)
        columns = {"entity_id": pa.array(np.arange(start, start + n, dtype=np.int64))}
        for i, name in enumerate(NUMERIC):
            columns[name] = pa.array(
                np.round(rng.normal(i % 5, 1 + i % 3, n), 2).astype(np.float32)
            )
        for name in CATEGORICAL:
            # Plain strings, as Spark or a database export writes them.
            columns[name] = pa.array(levels[name][rng.integers(0, len(levels[name]), n)])
        table = pa.table(columns)
        writer = writer or pq.ParquetWriter(folder / "part-0.parquet", table.schema)
        writer.write_table(table, row_group_size=ROW_GROUP)
    writer.close()


def model_features() -> list[list[str]]:
    """10 feature sets over ~120 of the 200 columns; 6 of them use categorical columns."""
    rng = np.random.default_rng(1)
    pool_numeric, pool_categorical = NUMERIC[:108], CATEGORICAL[:12]
    sets = []
    for m in range(MODELS):
        numeric = list(rng.choice(pool_numeric, 30, replace=False))
        categorical = list(rng.choice(pool_categorical, 4, replace=False)) if m % 5 < 3 else []
        sets.append(numeric + categorical)
    return sets


def train_packages(folder: Path, slice_path: Path, feature_sets: list[list[str]]) -> list[Path]:
    from catboost import CatBoostClassifier

    from scoring.packages.contract import save_package

    sample = pq.read_table(slice_path).slice(0, 30_000).to_pandas()
    target = (
        sample[NUMERIC[0]]
        + sample[NUMERIC[7]] * 0.5
        + np.random.default_rng(2).normal(0, 1, len(sample))
        > 0.5
    )
    paths = []
    for m, features in enumerate(feature_sets):
        categorical = [c for c in features if c in CATEGORICAL]
        model = CatBoostClassifier(
            iterations=300,
            depth=6,
            verbose=False,
            random_seed=m,
            allow_writing_files=False,
            cat_features=categorical,
        )
        frame = sample[features].copy()
        model.fit(frame, target.astype(int))
        path = folder / f"model-{m}.dill"
        save_package(str(path), model, features, params={"positive_class": 1})
        paths.append(path)
    return paths
