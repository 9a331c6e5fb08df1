"""The bad packages of tests/test_bad_input.py that upload fine and that validation refuses
in the sandbox: each with the message the user must read."""

import os
import re

import numpy as np

from tests.factories import packages
from tests.factories.bad_input import (
    SANDBOX_MEMORY_MB,
    UNKNOWN_ZONE,
    VALIDATION,
    Case,
    bad,
    fires_twice,
    proba,
    sandbox_limits_processes,
)
from tests.flows import WORKER_SANDBOX_TIMEOUT

VALIDATION_CASES = [
    # -- refused by validation in the sandbox --
    Case(
        "a truncated pickle",
        VALIDATION,
        "UnpicklingError: pickle data was truncated while loading",
        lambda: bad("truncated"),
    ),
    Case(
        "a pickle of a list",
        VALIDATION,
        "the package must be a dict with 'model' and 'features', got a builtins.list",
        lambda: bad("not a dict"),
    ),
    Case(
        "no model",
        VALIDATION,
        "'model' is missing: put the fitted model, pipeline or function under 'model'",
        lambda: bad("missing model"),
    ),
    Case(
        "no features",
        VALIDATION,
        "'features' is missing: list the column names the model consumes",
        lambda: bad("missing features"),
    ),
    Case(
        "'feature' for 'features'",
        VALIDATION,
        "'features' is missing: list the column names the model consumes "
        "(the package has 'feature': a typo?)",
        lambda: bad("mistyped features key"),
    ),
    Case(
        "features as one string",
        VALIDATION,
        "'features' must be a non-empty list of column names, got str",
        lambda: bad("features not a list"),
    ),
    Case(
        "a schedule as a number",
        VALIDATION,
        "'schedule' must be text: 'daily', 'weekly', 'monthly' or a 5-field cron expression, "
        "got int 5",
        lambda: bad("schedule not text"),
    ),
    Case(
        "params as a list",
        VALIDATION,
        "'params' must be a dict, got list",
        lambda: bad("params not a dict"),
    ),
    Case(
        "a model without predict",
        VALIDATION,
        "model has no predict_proba or predict and is not a function (it is a __main__.NoPredict)",
        lambda: bad("no predict"),
    ),
    Case(
        "the model's class instead of a fitted model",
        VALIDATION,
        "model is the class __main__.Proba, not a fitted model: put the fitted instance under "
        "'model'",
        lambda: bad("model is a class"),
    ),
    Case(
        "a shell command run at load",
        VALIDATION,
        "model has no predict_proba or predict and is not a function (it is a builtins.int)",
        lambda: packages.dumps(
            {"model": packages.RunsAtLoad(os.system, "echo pwned"), "features": ["age"]}
        ),
    ),
    Case(
        "a sleep forever at load",
        VALIDATION,
        f"timed out after {WORKER_SANDBOX_TIMEOUT} s while loading; the sandbox was stopped",
        lambda: bad("sleeps forever at load"),
    ),
    Case(
        "an exit at load", VALIDATION, "SystemExit: 3 while loading", lambda: bad("exits at load")
    ),
    Case(
        "an allocation without bound at load",
        VALIDATION,
        re.compile(
            rf"used \d+ MB of memory while loading, over the limit of {SANDBOX_MEMORY_MB} MB; "
            "the sandbox was stopped"
        ),
        lambda: packages.dumps(packages.grows_at_load()),
    ),
    Case(
        "an allocation without bound at predict",
        VALIDATION,
        re.compile(
            rf"used \d+ MB of memory while scoring, over the limit of {SANDBOX_MEMORY_MB} MB; "
            "the sandbox was stopped"
        ),
        lambda: packages.dumps(packages.grows_at_predict()),
    ),
    Case(
        "a fork bomb at load",
        VALIDATION,
        re.compile(
            r".+ while loading: the package reached the sandbox's limit of \d+ processes and "
            "threads"
        ),
        lambda: packages.dumps(packages.forks_at_load()),
        precondition=sandbox_limits_processes,
    ),
    Case(
        "a notebook global dill did not carry",
        VALIDATION,
        "NameError: name 'np' is not defined while predicting",
        lambda: bad("notebook global missing"),
    ),
    Case(
        "a class from a module that is not installed",
        VALIDATION,
        "ModuleNotFoundError: No module named 'lightgbm_private' while loading",
        lambda: bad("module not installed"),
    ),
    Case(
        "NaN scores",
        VALIDATION,
        "the model returned 200 NaN or infinite scores of 200",
        lambda: bad("NaN output"),
    ),
    Case(
        "scores of the wrong length",
        VALIDATION,
        "the model returned 3 scores for 200 rows",
        lambda: bad("wrong length output"),
    ),
    Case(
        "probabilities over 1",
        VALIDATION,
        "predict_proba returned values outside [0, 1] (min 1.5, max 1.5)",
        lambda: bad("out of range probability"),
    ),
    Case(
        "text instead of scores",
        VALIDATION,
        "the model function returned values that are not numbers (<U5)",
        lambda: bad("text output"),
    ),
    Case(
        "features the source does not have",
        VALIDATION,
        re.compile(
            r"2 features are missing from the feature source \(slice \d{4}-\d\d-\d\d\): income, zip"
        ),
        lambda: bad("features not in the source"),
    ),
    Case(
        "a package path in its name",
        VALIDATION,
        "name '../../etc/passwd' must not contain '/', '\\' or '..'",
        lambda: bad("path traversal name"),
    ),
    Case(
        "a package cron that fires twice a day",
        VALIDATION,
        fires_twice("'schedule': "),
        lambda: bad("cron twice a day"),
    ),
    Case(
        "a package cron with a minute out of range",
        VALIDATION,
        "'schedule': schedule '61 * * * *' is not a valid cron expression: Bad minute",
        lambda: bad("bad cron"),
    ),
    Case(
        "a package time zone that does not exist",
        VALIDATION,
        f"'timezone': {UNKNOWN_ZONE}",
        lambda: bad("unknown time zone"),
    ),
    Case(
        "a package email with an injected header",
        VALIDATION,
        "email 'a@bank.example\\nBcc: all@evil.example' is not a single valid address",
        lambda: bad("header injection email"),
    ),
    Case(
        "a positive class the model does not have",
        VALIDATION,
        "params.positive_class 'yes' is not one of the model's classes [0, 1]",
        lambda: proba(params={"positive_class": "yes"}),
    ),
    Case(
        "NaN in the reference scores",
        VALIDATION,
        "'reference_scores' has 1 NaN or infinite values",
        lambda: proba(reference_scores=[0.2, np.nan]),
    ),
]
