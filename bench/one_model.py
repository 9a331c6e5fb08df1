"""One model scored as an Airflow task per model scores it: a fresh interpreter that
imports, loads the package, reads its columns, predicts and writes its scores as Parquet
to S3. The fleet bench runs it for a random sample of the models and extrapolates.

    python bench/one_model.py PACKAGE SOURCE DAY OUTPUT

SOURCE is a Parquet file or postgresql://...?table=name; OUTPUT is bucket/key on the S3
server of the environment (S3_ENDPOINT_URL, S3_ACCESS_KEY, S3_SECRET_KEY).
"""

import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(package: str, source: str, day: str, output: str) -> None:
    import dill
    from pyarrow import fs

    sys.path.insert(0, str(ROOT))
    from bench.baselines import ScoreFiles, parquet_reader, raw_predict, sql_reader

    with open(package, "rb") as file:
        loaded = dill.load(file)
    if source.startswith("postgresql://"):
        import psycopg

        dsn, table = source.split("?table=")
        connection = psycopg.connect(dsn)
        read = sql_reader(connection, table, "dt", day)
    else:
        read = parquet_reader(source)
    frame = read(["entity_id", *loaded["features"]])
    scores = raw_predict(loaded["model"], frame[loaded["features"]])
    endpoint = os.environ["S3_ENDPOINT_URL"]
    filesystem = fs.S3FileSystem(
        endpoint_override=endpoint.split("://", 1)[-1],
        scheme=endpoint.split("://", 1)[0],
        access_key=os.environ["S3_ACCESS_KEY"],
        secret_key=os.environ["S3_SECRET_KEY"],
        region=os.environ.get("S3_REGION", "us-east-1"),
    )
    folder, name = output.rsplit("/", 1)
    ScoreFiles(filesystem, folder).write(name, frame["entity_id"].to_numpy(), scores)


def one_process_per_model(
    packages: list[Path], source: str, day: str, prefix: str, sample: int, seed: int
) -> dict:
    """Run a random `sample` of the packages one after another, each in a fresh
    interpreter; the mean and the time all would take (extrapolated)."""
    chosen = random.Random(seed).sample(packages, min(sample, len(packages)))
    seconds = []
    for path in chosen:
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, __file__, str(path), source, day, f"{prefix}/{path.stem}"],
            check=True,
            cwd=ROOT,
        )
        seconds.append(time.perf_counter() - started)
    mean = sum(seconds) / len(seconds)
    return {"measured": len(seconds), "mean": mean, "total": mean * len(packages)}


if __name__ == "__main__":
    main(*sys.argv[1:])
