"""Cold and warm start of a sandbox in an environment of pinned libraries, against the
default sandbox's start.

Each case runs in a fresh process (so it pays for its own zygote, as a new worker process
does) and is timed from nothing to the first scores of a chunk (--rows x 3 columns) by a
scikit-learn LogisticRegression:

- default: the worker's own zygote starts (imports pandas, pyarrow, scikit-learn, CatBoost,
  LightGBM, XGBoost), forks a sandbox, which loads the package and predicts;
- cold: the environment of scikit-learn==1.5.2 is built with uv from the index (an empty
  uv cache: every wheel downloaded), then the same from its interpreter;
- warm: the environment exists (another model or an earlier batch built it): the same
  without the build;
- and, for each zygote, a second sandbox forked from it (what every later batch pays).

    .venv/bin/python bench/environment_bench.py [--rows 100000] [--repeat 3]

Prints each case's median and its ratio to the default start. The bound: a warm start
costs at most twice the default's (it imports the same libraries, from one more folder).
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PIN = "scikit-learn==1.5.2"
MAKE_PACKAGE = """
import sys, dill, numpy as np
from sklearn.linear_model import LogisticRegression
rng = np.random.default_rng(0)
X = rng.normal(size=(2000, 3))
model = LogisticRegression().fit(X, X[:, 0] + rng.normal(size=2000) > 0)
with open(sys.argv[1], "wb") as file:
    dill.dump({"model": model, "features": ["a", "b", "c"], "requirements": sys.argv[2:]}, file)
"""


def case(kind: str, root: Path, folder: Path) -> dict:
    """One start, in this (fresh) process: seconds to the first scores, then a second
    sandbox's start from the same zygote."""
    from scoring.sandbox.client import Sandbox
    from scoring.sandbox.environments import Store
    from scoring.sandbox.limits import Limits

    started = time.monotonic()
    environment = Store(root).ready([PIN]) if kind != "default" else None
    built = time.monotonic() - started
    package = folder / f"{kind}.dill"
    python = str(environment.python) if environment else sys.executable
    pins = [PIN] if environment else []
    subprocess.run([python, "-c", MAKE_PACKAGE, str(package), *pins], check=True)  # not timed
    timings = {"build": built}
    for name in ("first", "second"):
        workdir = Path(tempfile.mkdtemp(dir=folder))
        started = time.monotonic()
        with Sandbox(workdir, Limits(), environment) as sandbox:
            sandbox.load(package)
            rows = sandbox.score(folder / "chunk.arrow", workdir / "scores.arrow")
        timings[name] = time.monotonic() - started
    assert rows == chunk_rows(folder)
    return timings


def chunk_rows(folder: Path) -> int:
    import pyarrow as pa

    with pa.memory_map(str(folder / "chunk.arrow")) as source:
        return pa.ipc.open_file(source).read_all().num_rows


def write_chunk(folder: Path, rows: int) -> None:
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(1)
    table = pa.table({name: rng.normal(size=rows) for name in ("a", "b", "c")})
    with pa.OSFile(str(folder / "chunk.arrow"), "wb") as sink:
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)


def run_case(kind: str, root: Path, folder: Path) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--case", kind, "--root", str(root), "--folder", str(folder)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(case(args.case, Path(args.root), Path(args.folder))))
        return 0
    folder = Path(tempfile.mkdtemp(prefix="dropscore-envbench-"))
    folder.chmod(0o755)  # a sandbox's own user passes through to its folder
    try:
        write_chunk(folder, args.rows)
        results: dict[str, list[dict]] = {"default": [], "cold": [], "warm": []}
        for repeat in range(args.repeat):
            root = folder / f"environments-{repeat}"  # empty: a cold build, uv cache too
            results["default"].append(run_case("default", root, folder))
            results["cold"].append(run_case("cold", root, folder))
            results["warm"].append(run_case("warm", root, folder))
            shutil.rmtree(root)
        return report(results, args.rows)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def report(results: dict[str, list[dict]], rows: int) -> int:
    median = {
        kind: {key: statistics.median(t[key] for t in timings) for key in timings[0]}
        for kind, timings in results.items()
    }
    base = median["default"]["first"]
    print(f"start to the first scores of {rows:,} rows, median of {len(results['default'])}:")
    for kind, label in (
        ("default", "default sandbox (worker's zygote)"),
        ("cold", f"cold: build {PIN} + zygote"),
        ("warm", "warm: existing environment + zygote"),
    ):
        total = median[kind]["build"] + median[kind]["first"]
        print(
            f"  {label:42s} {total:7.2f} s  {total / base:6.2f}x"
            f"  (build {median[kind]['build']:.2f} s)"
        )
    for kind in ("default", "warm"):
        second = median[kind]["second"]
        print(
            f"  {kind + ': a second sandbox, same zygote':42s} {second:7.2f} s  {second / base:6.2f}x"
        )
    broken = median["warm"]["first"] > 2 * base
    print("  BOUND BROKEN: warm start over 2x the default" if broken else "  within bounds")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
