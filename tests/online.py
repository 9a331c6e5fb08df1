"""Helpers of the online tests: calling the serving process as clients do."""

import contextlib
import time
from datetime import date

import numpy as np
import orjson
import pandas as pd
import polars as pl
import psutil
import redis
import requests
from rest_framework.authtoken.models import Token

from scoring.engine import scores
from scoring.models import Deployment
from scoring.online import request_log
from tests import flows
from tests.factories import packages


def online(owner, package: dict, name: str, validated, **settings_) -> Deployment:
    """A deployment of the package, validated and switched online."""
    deployment = flows.deploy(owner, package, name, validated, **settings_)
    Deployment.objects.filter(id=deployment.id).update(online=True)
    deployment.refresh_from_db()
    return deployment


def token_of(user) -> str:
    return Token.objects.get_or_create(user=user)[0].key


def slice_rows(feature_table, rows: int, day: date | None = None) -> pd.DataFrame:
    """Rows of a day's slice as the feature table holds them."""
    return flows.slice_frame(feature_table, day or date.today()).head(rows)


def own_scores(package: dict, frame: pd.DataFrame) -> np.ndarray:
    """What the package's model says itself, as its notebook would ask it."""
    model, features = package["model"], package["features"]
    if hasattr(model, "predict_proba"):
        return model.predict_proba(frame[features])[:, 1]
    return np.asarray(model(frame[features]), dtype=float)


def predict(server, deployment_id: int, token: str, body: dict) -> requests.Response:
    return requests.post(
        f"{server.url}/api/v1/models/{deployment_id}/predict",
        json=body,
        headers={"Authorization": f"Token {token}"},
        timeout=30,
    )


def records(frame: pd.DataFrame) -> list[dict]:
    return [{k: v for k, v in row.items()} for row in frame.astype(object).to_dict("records")]


def urls(name: str) -> list[tuple[str, str]]:
    """Every online URL of a model, by name (the V2 ones) or by id (all)."""
    v2 = [
        ("GET", f"/v2/models/{name}"),
        ("GET", f"/v2/models/{name}/ready"),
        ("POST", f"/v2/models/{name}/infer"),
    ]
    return v2 + ([("POST", f"/api/v1/models/{name}/predict")] if name.isdigit() else [])


# A model that misbehaves on a sign of its input: hangs past any timeout (age -1), keeps
# its core busy a while (age -2: long enough to be killed in the middle), raises (-3).
MOODY = """
import time
import numpy as np

def model(frame):
    age = frame["age"].to_numpy()
    if (age == -1).any():
        time.sleep(60)
    if (age == -2).any():
        end = time.monotonic() + 2.5
        while time.monotonic() < end:
            pass
    if (age == -3).any():
        raise ValueError("age must not be -3")
    return age / 100
"""


def moody_package() -> dict:
    return {"model": packages.notebook_function(MOODY, "model"), "features": ["age"]}


def sandboxes(server) -> list[psutil.Process]:
    """The serving process's sandboxes: the children of its zygotes."""
    zygotes = psutil.Process(server.process.pid).children()
    return [child for zygote in zygotes for child in zygote.children()]


def busy_sandbox(server, timeout: float = 10) -> psutil.Process:
    """The sandbox that is using its core now (to kill it in the middle of a request)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = {}
        for process in sandboxes(server):
            with contextlib.suppress(psutil.NoSuchProcess):
                before[process] = sum(process.cpu_times()[:2])
        time.sleep(0.2)
        for process, used in before.items():
            with contextlib.suppress(psutil.NoSuchProcess):
                if sum(process.cpu_times()[:2]) - used > 0.1:
                    return process
    raise AssertionError("no sandbox got busy")


def logged_rows(deployment_id: int, day: date | None = None) -> pl.DataFrame:
    """The request log's rows of a model's day, as an analyst reads them (Polars)."""
    if scores.open_table(request_log.TABLE) is None:
        return pl.from_arrow(request_log.SCHEMA.empty_table())
    uri = scores.table_uri(request_log.TABLE)
    frame = pl.read_delta(uri, storage_options=scores.storage_options())
    day = (day or date.today()).isoformat()
    return frame.filter((pl.col("model_id") == deployment_id) & (pl.col("dt") == day))


def ready(server, name: str, token: str) -> bool:
    response = requests.get(
        f"{server.url}/v2/models/{name}/ready",
        headers={"Authorization": f"Token {token}"},
        timeout=30,
    )
    return response.status_code == 200


def served(server, env: dict) -> set[tuple[str, int]]:
    """(model, version) a serving process holds loaded, as it tells the status page."""
    client = redis.Redis.from_url(env["REDIS_URL"])
    pattern = f"{env['REDIS_KEY_PREFIX']}online:process:*:{server.process.pid}"
    keys = list(client.scan_iter(match=pattern))
    if not keys:
        return set()
    snapshot = orjson.loads(client.get(keys[0]))
    return {(model["name"], model["version"]) for model in snapshot["models"]}
