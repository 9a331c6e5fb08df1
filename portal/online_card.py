"""What the model page's Online card shows: the switch, the two URLs the serving process
answers, copyable snippets, a row to try and the last 24 hours of requests.

The slow parts (a row of the latest slice, the request log) are read only while the model
is online: most models never are, and their page stays as fast as before.
"""

import json
import logging
import math
import pprint
import shlex
from datetime import date
from urllib.parse import quote

from django.conf import settings

from scoring.engine import features
from scoring.models import Deployment, PackageVersion, Role, ScoringRun
from scoring.online import stats
from scoring.quality import samples

log = logging.getLogger(__name__)
TOKEN_PLACEHOLDER = "<your token>"


def base_url() -> str:
    return settings.ONLINE_URL.rstrip("/")


def predict_url(deployment_id: int) -> str:
    """MLflow's scoring endpoint of the model: also where the Try-it form sends its row."""
    return f"{base_url()}/api/v1/models/{deployment_id}/predict"


def infer_url(deployment: Deployment) -> str:
    """The Open Inference Protocol's endpoint, by the model's name among its owner's."""
    return f"{base_url()}/v2/models/{quote(deployment.name, safe='')}/infer"


def answerable(deployment: Deployment) -> bool:
    """Whether a version can answer: without a valid champion the endpoint answers 409."""
    champion = deployment.champion
    return champion is not None and champion.state == PackageVersion.State.VALID


def row_columns(deployment: Deployment) -> list[str]:
    """The id column and the features of the version that answers (else the latest), in
    the package's order."""
    version = deployment.champion or deployment.latest_version
    package = (version.package if version else None) or {}
    names = package.get("features") or []  # none yet while the first version is pending
    return list(dict.fromkeys([settings.FEATURES_ID_COLUMN, *names]))


def example_row(deployment: Deployment) -> dict:
    """A row to try: one of the latest slice as the champion's latest run sampled it, else
    one read from the feature source, else the columns with blanks to fill in."""
    columns = row_columns(deployment)
    try:
        row = sampled_row(deployment, columns) or source_row(columns)
    except Exception:  # S3 or the source down: the form still works with blanks
        log.warning("no example row for model %s", deployment.id, exc_info=True)
        row = None
    return {name: plain(row[name]) for name in columns} if row else dict.fromkeys(columns)


def sampled_row(deployment: Deployment, columns: list[str]) -> dict | None:
    """A row of the sample the champion's latest successful run kept: no read of the source."""
    run = (
        deployment.runs.filter(
            role=Role.CHAMPION, status=ScoringRun.Status.SUCCEEDED, batch__isnull=False
        )
        .order_by("-date", "-finished_at")
        .first()
    )
    return samples.first_row(run.batch_id, run.date, columns) if run else None


def source_row(columns: list[str]) -> dict | None:
    """The first row of the feature source's latest slice, read by the worker's own readers.
    With ENGINE=spark the source is Spark's to read: not from a web request."""
    source = None if settings.ENGINE == "spark" else features.source_from_settings()
    if source is None:
        return None
    table = source.sample(source.latest_slice(date.today()), columns, 1)
    return table.slice(0, 1).to_pylist()[0]


def plain(value):
    """A value as JSON writes it: NaN and infinities as null, dates and decimals as text."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def curl_snippet(deployment: Deployment, row: dict) -> str:
    body = json.dumps({"dataframe_records": [row]})
    return (
        f"curl -X POST {shlex.quote(predict_url(deployment.id))} \\\n"
        f"  -H 'Authorization: Token {TOKEN_PLACEHOLDER}' \\\n"
        "  -H 'Content-Type: application/json' \\\n"
        f"  -d {shlex.quote(body)}"
    )


def python_snippet(deployment: Deployment, row: dict) -> str:
    return (
        "import requests\n\n"
        f"row = {pprint.pformat(row, width=88, sort_dicts=False)}\n"
        "response = requests.post(\n"
        f'    "{predict_url(deployment.id)}",\n'
        f'    headers={{"Authorization": "Token {TOKEN_PLACEHOLDER}"}},\n'
        '    json={"dataframe_records": [row]},\n'
        "    timeout=10,\n"
        ")\n"
        "response.raise_for_status()\n"
        'print(response.json()["predictions"])'
    )


def traffic(deployment: Deployment) -> dict:
    """The last 24 hours from the request log, or why they cannot be read now."""
    try:
        return stats.last_day(deployment.id)
    except Exception as exc:  # S3 down: the rest of the page still shows
        log.warning("the request log of model %s could not be read", deployment.id, exc_info=True)
        return {"error": f"{type(exc).__name__}: {exc}"}


def card(deployment: Deployment) -> dict:
    online = deployment.online
    row = example_row(deployment) if online else dict.fromkeys(row_columns(deployment))
    return {
        "on": online,
        "answerable": answerable(deployment),
        "base_url": base_url(),
        "infer_url": infer_url(deployment),
        "predict_url": predict_url(deployment.id),
        "curl": curl_snippet(deployment, row),
        "python": python_snippet(deployment, row),
        "id_column": settings.FEATURES_ID_COLUMN,
        "row_text": json.dumps(row, indent=2),
        "traffic": traffic(deployment) if online else None,
    }
