"""Model packages good and bad, as a notebook would make them."""

import os
import sys
import time
import types
from pathlib import Path

import dill
import numpy as np

from tests.factories.features import CATEGORICAL, FEATURES, NUMERIC, churn_labels, feature_frame


def dumps(obj) -> bytes:
    return dill.dumps(obj, recurse=True)


# --- good packages -------------------------------------------------------------


def catboost_package(**extra) -> dict:
    from catboost import CatBoostClassifier

    frame = feature_frame(2000, seed=42)
    model = CatBoostClassifier(
        iterations=30,
        depth=4,
        verbose=False,
        random_seed=0,
        thread_count=1,
        cat_features=CATEGORICAL,
        allow_writing_files=False,
    )
    model.fit(frame[FEATURES], churn_labels(frame))
    return {
        "model": model,
        "features": FEATURES,
        "meta": {"author": "alice", "gini_oot": 0.42},
        **extra,
    }


def lightgbm_package(**extra) -> dict:
    """An LGBMClassifier on the pandas categories as they come (no encoding of its own)."""
    from lightgbm import LGBMClassifier

    frame = feature_frame(2000, seed=11)
    model = LGBMClassifier(n_estimators=30, num_leaves=15, n_jobs=1, verbose=-1, random_state=0)
    model.fit(frame[FEATURES], churn_labels(frame))
    return {"model": model, "features": FEATURES, **extra}


def lightgbm_booster_package(**extra) -> dict:
    """A bare lightgbm.Booster from lgb.train: predict gives the probability."""
    import lightgbm

    frame = feature_frame(2000, seed=12)
    params = {"objective": "binary", "num_leaves": 15, "num_threads": 1, "verbose": -1}
    booster = lightgbm.train(params, lightgbm.Dataset(frame[FEATURES], churn_labels(frame)), 30)
    return {"model": booster, "features": FEATURES, **extra}


def xgboost_package(**extra) -> dict:
    from xgboost import XGBClassifier

    frame = feature_frame(2000, seed=13)
    model = XGBClassifier(
        n_estimators=30, max_depth=4, enable_categorical=True, tree_method="hist", n_jobs=1
    )
    model.fit(frame[FEATURES], churn_labels(frame))
    return {"model": model, "features": FEATURES, **extra}


def xgboost_booster_package(**extra) -> dict:
    """A bare xgboost.Booster from xgb.train: it predicts on a DMatrix, not a DataFrame."""
    import xgboost

    frame = feature_frame(2000, seed=14)
    data = xgboost.DMatrix(frame[FEATURES], churn_labels(frame), enable_categorical=True)
    params = {"objective": "binary:logistic", "max_depth": 4, "nthread": 1}
    return {"model": xgboost.train(params, data, 30), "features": FEATURES, **extra}


def sklearn_package(**extra) -> dict:
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame = feature_frame(2000, seed=7)
    pipeline = Pipeline(
        [
            (
                "prep",
                ColumnTransformer(
                    [
                        ("num", StandardScaler(), NUMERIC),
                        ("cat", OneHotEncoder(handle_unknown="ignore"), CATEGORICAL),
                    ]
                ),
            ),
            ("clf", LogisticRegression(max_iter=500)),
        ]
    )
    pipeline.fit(frame[FEATURES], churn_labels(frame))
    return {"model": pipeline, "features": FEATURES, "schedule": "weekly", **extra}


def function_package(**extra) -> dict:
    def spend_score(frame):
        return 1 / (1 + np.exp(-(frame["monthly_spend"].to_numpy() - 60) / 20))

    return {"model": spend_score, "features": ["monthly_spend"], **extra}


# --- bad packages --------------------------------------------------------------


class RunsAtLoad:
    """Unpickling calls `func(*args)`: what a malicious or careless package does."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def without_global(source: str, name: str):
    """A function defined where `np` was never imported, as in a notebook cell dill did not carry."""
    namespace: dict = {}
    exec(source, namespace)
    return namespace[name]


def function_returning(values_source: str) -> dict:
    source = f"import numpy as np\ndef model(frame):\n    return {values_source}\n"
    return {"model": without_global(source, "model"), "features": ["age"]}


# Classes as a notebook defines them: in __main__, so dill carries them by value
# (the sandbox cannot import this test module, just as it cannot import a notebook).
NOTEBOOK_CELL = '''
import numpy as np

class NoPredict:
    def fit(self, X, y):
        return self

class Proba:
    """A classifier-like object whose predict_proba returns what it was told to."""
    classes_ = [0, 1]

    def __init__(self, value):
        self.value = value

    def predict_proba(self, frame):
        return np.column_stack([1 - np.full(len(frame), self.value), np.full(len(frame), self.value)])

def allocate(megabytes):
    return b"x" * (megabytes * 1024**2)  # touched, so it is resident

def spin():
    while True:
        pass

def connect(port):
    import socket
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
    return "connected"
'''
NOTEBOOK: dict = {"__name__": "__main__"}
exec(NOTEBOOK_CELL, NOTEBOOK)
NoPredict, Proba = NOTEBOOK["NoPredict"], NOTEBOOK["Proba"]
allocate, spin, connect = NOTEBOOK["allocate"], NOTEBOOK["spin"], NOTEBOOK["connect"]


def missing_module_bytes(module_name: str = "lightgbm_private") -> bytes:
    """A model whose class lives in a module the portal does not have.

    dill pickles a class of an importable module by reference, as pickle does: loading
    it imports the module, which is installed where the notebook ran, not in the sandbox.
    """
    module = types.ModuleType(module_name)
    exec(
        "class Booster:\n    def predict(self, frame):\n        return [0.5] * len(frame)\n",
        vars(module),
    )
    sys.modules[module_name] = module
    try:
        return dumps({"model": module.Booster(), "features": ["age"]})
    finally:
        del sys.modules[module_name]


# Run by a sandbox only under a low memory limit (see tests/test_bad_input.py): a loop that
# holds 8 MB more each turn, touching every page so the memory is resident.
GROW = """
def grow(frame=None):
    chunks = []
    while True:
        chunk = bytearray(8 * 1024**2)
        chunk[::4096] = b"x" * (len(chunk) // 4096)
        chunks.append(chunk)
"""
# Never run without a process limit on the sandbox: it would take the machine down.
FORK_BOMB = """
import os

def fork_forever():
    while True:
        os.fork()
"""


def grows_at_load() -> dict:
    return {"model": RunsAtLoad(notebook_function(GROW, "grow")), "features": ["age"]}


def grows_at_predict() -> dict:
    return {"model": notebook_function(GROW, "grow"), "features": ["age"]}


def forks_at_load() -> dict:
    return {"model": RunsAtLoad(notebook_function(FORK_BOMB, "fork_forever")), "features": ["age"]}


def bad_packages(marker_dir: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, a part of the message the user must see)."""
    good = dumps(function_package())
    features = ["age"]

    def constant_with(**keys) -> bytes:
        """A valid package but for `keys`."""
        return dumps({"model": Proba(0.5), "features": features, **keys})

    shell = f"env > {marker_dir}/sandbox-env.txt"
    return {
        "truncated": (good[: len(good) // 2], "while loading"),
        "not a dict": (
            dumps([1, 2, 3]),
            "the package must be a dict with 'model' and 'features', got a builtins.list",
        ),
        "missing model": (dumps({"features": features}), "'model' is missing"),
        "missing features": (dumps({"model": Proba(0.5)}), "'features' is missing"),
        "empty features": (
            dumps({"model": Proba(0.5), "features": []}),
            "'features' must be a non-empty list of column names",
        ),
        "features not a list": (
            dumps({"model": Proba(0.5), "features": "age"}),
            "'features' must be a non-empty list of column names",
        ),
        "duplicate features": (
            dumps({"model": Proba(0.5), "features": ["age", "age"]}),
            "'features' has duplicate column names: age",
        ),
        "no predict": (
            dumps({"model": NoPredict(), "features": features}),
            "model has no predict_proba or predict",
        ),
        "shell command at load": (
            dumps({"model": RunsAtLoad(os.system, shell), "features": features}),
            "model has no predict_proba or predict and is not a function (it is a builtins.int)",
        ),
        "sleeps forever at load": (
            dumps({"model": RunsAtLoad(time.sleep, 3600), "features": features}),
            "timed out after",
        ),
        "exits at load": (
            dumps({"model": RunsAtLoad(exit, 3), "features": features}),
            "SystemExit: 3 while loading",
        ),
        "notebook global missing": (
            dumps(
                {
                    "model": without_global(
                        "def model(frame):\n    return np.ones(len(frame))\n", "model"
                    ),
                    "features": features,
                }
            ),
            "NameError: name 'np' is not defined while predicting",
        ),
        "path traversal name": (
            constant_with(name="../../etc/passwd"),
            "must not contain '/', '\\' or '..'",
        ),
        "bad cron": (
            constant_with(schedule="61 * * * *"),
            "is not a valid cron expression",
        ),
        "header injection email": (
            constant_with(email="a@bank.example\nBcc: all@evil.example"),
            "is not a single valid address",
        ),
        "missing method": (
            constant_with(params={"method": "decision_function"}),
            "params.method is 'decision_function' but the model has no decision_function",
        ),
        "bad format": (
            constant_with(format="two"),
            "'format' must be a whole number",
        ),
        "NaN output": (
            dumps(function_returning("np.full(len(frame), np.nan)")),
            "NaN or infinite scores",
        ),
        "wrong length output": (
            dumps(function_returning("np.ones(3)")),
            "the model returned 3 scores for",
        ),
        "out of range probability": (
            dumps({"model": Proba(1.5), "features": features}),
            "predict_proba returned values outside [0, 1]",
        ),
        "features not in the source": (
            dumps({"model": Proba(0.5), "features": ["age", "income", "zip"]}),
            "2 features are missing from the feature source",
        ),
        "mistyped features key": (
            dumps({"model": Proba(0.5), "feature": features}),
            "'features' is missing: list the column names the model consumes "
            "(the package has 'feature': a typo?)",
        ),
        "schedule not text": (
            constant_with(schedule=5),
            "'schedule' must be text",
        ),
        "params not a dict": (
            constant_with(params=["predict"]),
            "'params' must be a dict, got list",
        ),
        "model is a class": (
            dumps({"model": Proba, "features": features}),
            "not a fitted model: put the fitted instance under 'model'",
        ),
        "text output": (
            dumps(function_returning("np.where(frame['age'] > 40, 'churn', 'stay')")),
            "the model function returned values that are not numbers (<U5)",
        ),
        "module not installed": (
            missing_module_bytes(),
            "ModuleNotFoundError: No module named 'lightgbm_private' while loading",
        ),
        "unknown time zone": (
            constant_with(timezone="Mars/Olympus_Mons"),
            "'timezone': unknown time zone 'Mars/Olympus_Mons'",
        ),
        "cron twice a day": (
            constant_with(schedule="0 6,18 * * *"),
            "fires twice on",
        ),
        "NaN reference scores": (
            constant_with(reference_scores=[0.2, np.nan]),
            "'reference_scores' has 1 NaN or infinite values",
        ),
    }


def notebook_function(source: str, name: str):
    """A function as a notebook cell defines it: in __main__, carried by value."""
    namespace: dict = {"__name__": "__main__"}
    exec(source, namespace)
    return namespace[name]


# Validation smoke-tests on 200 rows; the test slices have 300 or 500: these models
# misbehave only on a whole slice, so they validate and then fail or dawdle when scored.
SLOW = """
import time
import numpy as np

def model(frame):
    if len(frame) > 250:
        time.sleep({seconds})
    return np.full(len(frame), 0.5)
"""

# Fails while the test keeps the file `down` (a sandbox cannot read or write outside its
# folder, but it can see whether a path exists).
FLAKY = """
import os
import numpy as np

def model(frame):
    if len(frame) > 250 and os.path.exists({down!r}):
        raise RuntimeError("the source system is down")
    return np.full(len(frame), 0.25)
"""


def slow_package(seconds: float) -> dict:
    return {"model": notebook_function(SLOW.format(seconds=seconds), "model"), "features": ["age"]}


def flaky_package(down: Path, max_attempts: int = 3) -> dict:
    model = notebook_function(FLAKY.format(down=str(down)), "model")
    return {
        "model": model,
        "features": ["age"],
        "params": {"retry_delay_minutes": 0, "max_attempts": max_attempts},
    }


# Raises on a whole slice, every time it is scored.
BROKEN = """
import numpy as np

def model(frame):
    if len(frame) > 250:
        raise RuntimeError("the model is broken")
    return np.full(len(frame), 0.25)
"""


# Kills its own process on a whole slice: the sandbox dies under whatever else it serves.
CRASHING = """
import os
import signal
import numpy as np

def model(frame):
    if len(frame) > 250:
        os.kill(os.getpid(), signal.SIGKILL)
    return np.full(len(frame), 0.25)
"""


def crashing_package(max_attempts: int = 3) -> dict:
    return {
        "model": notebook_function(CRASHING, "model"),
        "features": ["age"],
        "params": {"max_attempts": max_attempts},
    }


def broken_package(max_attempts: int = 3) -> dict:
    return {
        "model": notebook_function(BROKEN, "model"),
        "features": ["age"],
        "params": {"max_attempts": max_attempts},
    }


# What a package tries, as a notebook cell defines it: in __main__, so dill carries it by
# value. try_all raises with what happened to each attempt, so the sandbox's error
# message brings it back.
ATTEMPTS_CELL = """
import errno
import json
import os
import socket
import subprocess
import sys
import time

def read(path):
    with open(path, "rb") as file:
        file.read(1)

def write(path):
    with open(path, "w") as file:
        file.write("written by a package")

def signal(pid):
    os.kill(int(pid), 0)

def connect_unix(path):
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(path)

ACTIONS = {"read": read, "list": os.listdir, "write": write, "signal": signal,
           "connect": connect_unix}

def try_all(attempts):
    outcomes = {}
    for action, target in attempts:
        try:
            ACTIONS[action](target)
            outcomes[f"{action} {target}"] = "done"
        except OSError as exc:
            outcomes[f"{action} {target}"] = errno.errorcode[exc.errno]
    raise RuntimeError("outcomes " + json.dumps(outcomes))

def fork_bomb():
    while True:
        os.fork()

def leave_group():
    if os.fork() == 0:
        os.setsid()
        time.sleep(3600)
    return "left"
"""
CELL: dict = {"__name__": "__main__"}
exec(ATTEMPTS_CELL, CELL)


# --- importance ------------------------------------------------------------------


def decided_by_spend(frame) -> np.ndarray:
    """The target of a world where monthly spend alone decides churn."""
    return (frame["monthly_spend"].to_numpy() > 60).astype(int)


def spend_decides(kind: str) -> dict:
    """A model of `kind` fitted where monthly_spend alone decides the target."""
    from catboost import CatBoostClassifier
    from lightgbm import LGBMClassifier
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from xgboost import XGBClassifier

    frame = feature_frame(3000, seed=21)
    makers = {
        "catboost": lambda: CatBoostClassifier(
            iterations=50, depth=3, verbose=False, thread_count=1, cat_features=CATEGORICAL
        ),
        "lightgbm": lambda: LGBMClassifier(n_estimators=30, n_jobs=1, verbose=-1),
        "xgboost": lambda: XGBClassifier(
            n_estimators=30, max_depth=3, enable_categorical=True, tree_method="hist", n_jobs=1
        ),
        "random_forest": lambda: RandomForestClassifier(n_estimators=30, max_depth=4, n_jobs=1),
        # Seen unscaled: its coefficients are weighed by each column's spread.
        "logistic": lambda: LogisticRegression(max_iter=1000),
    }
    if kind == "function":
        return function_package()  # a function of monthly_spend alone: by permutation
    columns = NUMERIC if kind in ("random_forest", "logistic") else FEATURES
    model = makers[kind]().fit(frame[columns], decided_by_spend(frame))
    return {"model": model, "features": columns}
