"""Helpers of the online tests: calling the serving process as clients do."""

from datetime import date

import numpy as np
import pandas as pd
import requests
from rest_framework.authtoken.models import Token

from scoring.models import Deployment
from tests import flows


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
