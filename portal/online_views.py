"""The model page's Online card's actions: the switch, and Try it, which sends a row to the
serving process for the signed-in user and shows the answer under the form.

The web process never scores a row itself: it forwards the row to the serving process
(ONLINE_URL), signing its user in with a value only this site's SECRET_KEY makes, which
the server accepts for a minute.
"""

import http.client
import json
import time
import urllib.error
import urllib.request

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core import signing
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from portal import online_card
from portal.views import get_deployment_for_user, model_context
from scoring.models import Deployment
from scoring.online import directory
from scoring.packages import deployments

# A model not loaded yet makes the first request wait for it, then score.
# Beyond this, the server is taken as down.
FORWARD_EXTRA_SECONDS = 5.0
# The portal calls its own serving process: never through an HTTP proxy of the environment.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@login_required
@require_POST
def switch(request: HttpRequest, deployment_id: int) -> HttpResponse:
    """Switch the model online or off (the form says `online=on` or `off`), recorded with
    its author like every change."""
    deployment = get_deployment_for_user(request, deployment_id, "online")
    wanted = request.POST.get("online")
    if wanted not in ("on", "off"):
        messages.error(request, "Say whether to switch it online (on) or off.")
    else:
        deployment = deployments.update(deployment, online=wanted == "on")
        messages.success(request, switch_message(deployment))
    return redirect(reverse("model", args=[deployment.id]) + "#online")


def switch_message(deployment: Deployment) -> str:
    if not deployment.online:
        return f"{deployment.name} no longer answers online; its schedule is as it was."
    if not online_card.answerable(deployment):
        return (
            f"{deployment.name} is switched online, but it has no valid version to answer "
            "with: its endpoint answers 409 until one is valid."
        )
    return f"{deployment.name} answers online at the URLs below."


@login_required
@require_POST
def try_it(request: HttpRequest, deployment_id: int) -> HttpResponse:
    """Send the form's row (a JSON object, or a list of them) to the serving process as the
    signed-in user, and show the model's page with the answer."""
    deployment = get_deployment_for_user(request, deployment_id, "predict")
    text = request.POST.get("row", "")
    try:
        records = records_of(text)
    except ValueError as exc:
        result, status = {"answered": False, "message": str(exc)}, 400
    else:
        result = forward(deployment.id, request.user.id, records)
        status = 200 if result["answered"] else 502
    context = model_context(request, deployment)
    context["online"] |= {"row_text": text, "result": result}
    return render(request, "portal/model.html", context, status=status)


def records_of(text: str) -> list[dict]:
    """The rows of the form: one JSON object, or a list of them; ValueError says what is wrong."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"The row is not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})."
        ) from None
    rows = [value] if isinstance(value, dict) else value
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise ValueError('Give a row as a JSON object ({"feature": value, ...}) or a list of them.')
    return rows


def portal_credential(user_id: int) -> str:
    return "Portal " + signing.dumps({"user": user_id}, salt=directory.PORTAL_SALT)


def forward(deployment_id: int, user_id: int, records: list[dict]) -> dict:
    """POST the rows to the model's predict URL as `user_id`; what came back, or that
    nothing did (the server down, unreachable or too slow): never an exception."""
    url = online_card.predict_url(deployment_id)
    request = urllib.request.Request(
        url,
        data=json.dumps({"dataframe_records": records}).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": portal_credential(user_id)},
    )
    timeout = (
        settings.ONLINE_LOAD_WAIT_SECONDS + settings.ONLINE_TIMEOUT_SECONDS + FORWARD_EXTRA_SECONDS
    )
    started = time.perf_counter()
    try:
        with OPENER.open(request, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:  # an answer all the same: 4xx or 5xx
        status, body = exc.code, exc.read()
    except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, not HTTP
        reason = getattr(exc, "reason", exc)
        return {
            "answered": False,
            "message": f"The online service at {online_card.base_url()} did not answer: {reason}.",
        }
    return answer(status, body, (time.perf_counter() - started) * 1000)


def answer(status: int, body: bytes, ms: float) -> dict:
    """The server's answer as the card shows it: the predictions, or its message."""
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    result = {"answered": True, "status": status, "ok": status == 200, "ms": ms}
    if status == 200 and isinstance(payload, dict) and "predictions" in payload:
        return result | {"predictions": json.dumps(payload["predictions"], indent=2)}
    message = payload.get("message") or payload.get("error") if isinstance(payload, dict) else None
    return result | {"ok": False, "message": message or body.decode(errors="replace")[:2000]}
