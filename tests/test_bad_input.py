"""Bad uploads, each through the drop zone (the UI) and the REST API, as a user would send them.

Every case ends in a message the user reads and changes nothing it should not:

- refused at upload: a 400 with the message; no S3 object, no row, quota use unchanged,
  no temporary file left;
- refused by validation (the sandbox): the version ends invalid with the message on the
  model page and in the API; the package stays stored as that version (its size counts
  in the quota, like any version's, until the model is deleted) and nothing else is;
  the model is not scheduled, no run is made, and a valid version before it stays the
  one that scores;
- made safe: a path in the file name, a name in another script: stored under the
  user's folder with a slug the server made.

The validations run on a worker of this module with a low sandbox memory limit, so a
package that allocates without bound is stopped in a fraction of a second.
"""

import html
import http.client
import json
import re
import secrets
import select
import socket
import time
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from django.test import Client
from django.utils import timezone
from django.utils.html import escape
from rest_framework.authtoken.models import Token

from scoring.models import Deployment, PackageVersion, ScoringRun
from scoring.packages import quotas
from scoring.packages.schedules import PRESETS
from scoring.runs import dispatch
from tests.factories import packages
from tests.factories.bad_input import (
    API,
    CASES,
    INJECTED_EMAIL,
    SAFE,
    SANDBOX_MEMORY_MB,
    TWICE_A_DAY,
    UI,
    UNKNOWN_ZONE,
    UPLOAD,
    VALIDATION,
    Case,
    deploy_directly,
    fires_twice,
    good,
    params,
)
from tests.factories.cast import api_client_for
from tests.factories.invalid_packages import VALIDATION_CASES
from tests.flows import start_worker, stop_worker

pytestmark = pytest.mark.django_db(transaction=True)

ALL_CASES = [*CASES, *VALIDATION_CASES]

# --- fixtures ------------------------------------------------------------------


@pytest.fixture(scope="module")
def validating_worker(worker_env, celery_app_configured, state_dir):
    """A worker whose sandboxes have a low memory limit, on a queue of this module's own."""
    app, queue = celery_app_configured
    own_queue = f"{queue}-bad-input"
    env = {
        **worker_env,
        "SANDBOX_MEMORY_BYTES": str(SANDBOX_MEMORY_MB * 1024**2),
    }
    process = start_worker(env, own_queue, state_dir / "bad-input-worker.log")
    app.conf.task_default_queue = own_queue
    yield process
    app.conf.task_default_queue = queue
    stop_worker(process)


@pytest.fixture(autouse=True)
def site(settings, tmp_path):
    settings.QUOTA_ACTIVE_MODELS = 10
    settings.QUOTA_BYTES = 1024**3
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path / "uploads")
    (tmp_path / "uploads").mkdir()
    return settings


# --- sending an upload as the drop zone and as a notebook do -------------------


def multipart(parts: list[tuple[str, "str | tuple[str, bytes]"]]) -> tuple[bytes, str]:
    """A multipart/form-data body, by hand: the test clients would drop a path from a file name."""
    boundary = "----dropscore-test-boundary"
    body = b""
    for name, value in parts:
        if isinstance(value, tuple):
            filename, data = value
            head = f'name="{name}"; filename="{filename}"\r\nContent-Type: application/octet-stream'
        else:
            head, data = f'name="{name}"', value.encode()
        body += f"--{boundary}\r\nContent-Disposition: form-data; {head}\r\n\r\n".encode()
        body += data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def drop_zone_client(user) -> Client:
    """A browser on My models: signed in, holding the CSRF cookie the page set."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    client.get("/")
    return client


def drop_zone_form(user, fields: dict) -> list[tuple[str, str]]:
    """The drop zone's form fields with their defaults, in page order, after the file."""
    form = {"name": "", "email": user.email, "schedule": "daily", "cron": "", "timezone": "UTC"}
    for key, value in fields.items():
        if key == "schedule" and value not in PRESETS:
            form["schedule"], form["cron"] = "custom", value
        else:
            form[key] = value
    return list(form.items())


def post(channel: str, user, data: bytes | None, filename: str, fields: dict):
    file = [("file", (filename, data))] if data is not None else []
    if channel == UI:
        client = drop_zone_client(user)
        token = [("csrfmiddlewaretoken", client.cookies["csrftoken"].value)]
        body, content_type = multipart(token + file + drop_zone_form(user, fields))
        return client.post(
            "/models/upload/",
            data=body,
            content_type=content_type,
            HTTP_X_REQUESTED_WITH="XMLHttpRequest",
        )
    body, content_type = multipart(list(fields.items()) + file)  # as requests orders them
    return api_client_for(user).post("/api/v1/models/", data=body, content_type=content_type)


def refusal(channel: str, response) -> str:
    assert response.status_code == 400, response.content
    assert response["Content-Type"] == "application/json"
    return response.json()["error" if channel == UI else "detail"]


def accepted(channel: str, response) -> tuple[int, str]:
    """The new deployment's id and name."""
    assert response.status_code == 201, response.content
    body = response.json()
    return (body["deployment"] if channel == UI else body["id"]), body["name"]


def expected(case: Case, channel: str):
    return case.message[channel] if isinstance(case.message, dict) else case.message


def assert_reads(actual: str, message) -> None:
    if isinstance(message, re.Pattern):
        assert message.fullmatch(actual), f"{actual!r} does not match {message.pattern!r}"
    else:
        assert actual == message


def everything(user, bucket) -> dict:
    """What a bad upload must leave as it was."""
    return {
        "deployments": list(
            Deployment.objects.values_list(
                "name", "status", "email", "schedule", "timezone", "next_run_at"
            )
        ),
        # Not their state: the worker may validate a version made before, meanwhile.
        "versions": list(
            PackageVersion.objects.values_list("deployment__name", "number", "file", "sha256")
        ),
        "objects": bucket(),
        "quota": quotas.usage(user)["text"],
        "runs": ScoringRun.objects.count(),
    }


# --- the tests -----------------------------------------------------------------


@pytest.mark.parametrize("case, channel", params(c for c in ALL_CASES if c.stage == UPLOAD))
def test_a_bad_upload_is_refused_with_its_message_and_changes_nothing(
    case, channel, owner, bucket, site, tmp_path
):
    if case.setup:
        case.setup(owner, site)
    before = everything(owner, bucket)

    response = post(channel, owner, case.package(), case.filename, case.fields)

    assert_reads(refusal(channel, response), expected(case, channel))
    assert everything(owner, bucket) == before
    assert list((tmp_path / "uploads").iterdir()) == []


@pytest.mark.parametrize("case, channel", params(c for c in ALL_CASES if c.stage == SAFE))
def test_a_path_or_a_foreign_script_in_a_name_is_stored_under_the_users_folder(
    case, channel, owner, bucket
):
    response = post(channel, owner, case.package(), case.filename, case.fields)

    deployment_id, name = accepted(channel, response)
    assert name == case.message
    assert bucket() == [case.stored_as]
    version = PackageVersion.objects.get(deployment_id=deployment_id)
    assert version.file.name == case.stored_as
    assert "/" not in version.filename and "\\" not in version.filename


@pytest.mark.parametrize("case, channel", params(c for c in ALL_CASES if c.stage == VALIDATION))
def test_a_bad_package_ends_invalid_with_its_message_and_is_never_scheduled(
    case, channel, owner, bucket, validated, validating_worker
):
    if case.precondition:
        case.precondition(owner, validated)
    response = post(channel, owner, case.package(), "bad-model.dill", case.fields)
    deployment_id, _ = accepted(channel, response)
    version = validated(PackageVersion.objects.get(deployment_id=deployment_id), timeout=120)

    assert version.state == PackageVersion.State.INVALID, version.message
    assert_reads(version.message, expected(case, channel))
    api = api_client_for(owner)
    shown = api.get(f"/api/v1/models/{deployment_id}/").json()
    assert shown["latest_version"]["validation"] == {"state": "invalid", "message": version.message}
    assert (shown["current_version"], shown["next_run_at"]) == (None, None)
    page = drop_zone_client(owner).get(f"/models/{deployment_id}/").content.decode()
    assert f'<div class="error-box">{escape(version.message)}</div>' in page
    assert "No runs yet." in page and "The first is due" not in page
    # Nothing runs: not at the next fire times, not on request.
    assert dispatch.tick(timezone.now() + timedelta(days=40)) is None
    score_now = api.post(f"/api/v1/models/{deployment_id}/runs/", {}, format="json")
    assert score_now.status_code == 409
    assert score_now.json()["detail"] == "bad-model has no valid version to score"
    assert not ScoringRun.objects.exists()
    # The package is kept as the invalid version it is, and nothing else is stored.
    assert bucket() == ["alice/bad-model/v1.dill"]


BAD_SETTINGS = [
    ({"schedule": TWICE_A_DAY}, fires_twice()),
    ({"timezone": "Mars/Olympus_Mons"}, UNKNOWN_ZONE),
    ({"email": INJECTED_EMAIL}, f"email {INJECTED_EMAIL!r} is not a single valid address"),
]


@pytest.mark.parametrize(
    "fields, message, channel",
    [(f, m, channel) for f, m in BAD_SETTINGS for channel in (UI, API)],
    ids=[f"{channel}: {next(iter(f))}" for f, _ in BAD_SETTINGS for channel in (UI, API)],
)
def test_bad_settings_of_a_model_are_refused_on_its_page_and_in_the_api(
    fields, message, channel, owner, bucket
):
    deployment = deploy_directly(owner, good(), "churn").deployment
    before = everything(owner, bucket)

    if channel == UI:
        browser = drop_zone_client(owner)
        form = dict(drop_zone_form(owner, fields))  # the model page's form has the same fields
        form.pop("name")
        form["csrfmiddlewaretoken"] = browser.cookies["csrftoken"].value
        response = browser.post(f"/models/{deployment.id}/settings/", form, follow=True)
        [flash] = re.findall(r'<div class="flash error">(.*?)</div>', response.content.decode())
        assert_reads(html.unescape(flash), message)
    else:
        response = api_client_for(owner).patch(
            f"/api/v1/models/{deployment.id}/", fields, format="json"
        )
        assert response.status_code == 400
        assert_reads(response.json()["detail"], message)
    assert everything(owner, bucket) == before


OVER_A_VALID_VERSION = [
    c
    for c in ALL_CASES
    if c.name in ("a model without predict", "NaN scores", "an allocation without bound at predict")
]


@pytest.mark.parametrize("case, channel", params(OVER_A_VALID_VERSION))
def test_a_bad_new_version_leaves_the_valid_one_scoring(
    case, channel, owner, bucket, validated, validating_worker
):
    first = validated(deploy_directly(owner, good(), "churn"))
    assert first.state == PackageVersion.State.VALID, first.message
    deployment = first.deployment
    deployment.refresh_from_db()
    settings_before = (deployment.status, deployment.schedule, deployment.next_run_at)

    response = post(channel, owner, case.package(), "churn.dill", {"name": "churn"})

    assert accepted(channel, response)[0] == deployment.id
    second = validated(PackageVersion.objects.get(deployment=deployment, number=2), timeout=120)
    assert second.state == PackageVersion.State.INVALID
    assert_reads(second.message, expected(case, channel))
    deployment.refresh_from_db()
    assert (deployment.status, deployment.schedule, deployment.next_run_at) == settings_before
    assert deployment.champion == first
    shown = api_client_for(owner).get(f"/api/v1/models/{deployment.id}/").json()
    assert (shown["current_version"], shown["latest_version"]["number"]) == (1, 2)
    page = drop_zone_client(owner).get(f"/models/{deployment.id}/").content.decode()
    assert "scoring uses v1" in page
    assert bucket() == ["alice/churn/v1.dill", "alice/churn/v2.dill"]


def test_a_package_just_inside_the_rules_is_valid_and_its_settings_apply(
    owner, validated, validating_worker
):
    """The checks above are no stricter than they say: a cron of one time a day, on some
    days, with a time zone applies where the upload gave no schedule; a near-miss key is a
    warning."""
    package = packages.function_package(
        schedule="45 23 * * mon-fri", timezone="Europe/London", Meta={"author": "ana"}
    )
    response = post(API, owner, packages.dumps(package), "spend.dill", {})
    version = validated(PackageVersion.objects.get(deployment_id=accepted(API, response)[0]))

    assert version.state == PackageVersion.State.VALID, version.message
    deployment = Deployment.objects.get(id=version.deployment_id)
    assert (deployment.schedule, deployment.timezone) == (package["schedule"], "Europe/London")
    assert deployment.next_run_at is not None
    warning = "'Meta' is not a key of the package format and is ignored: did you mean 'meta'?"
    assert version.package["warnings"] == [warning]
    page = drop_zone_client(owner).get(f"/models/{deployment.id}/").content.decode()
    assert f"<li>{escape(warning)}</li>" in page


# --- a 2 GB upload, over real HTTP ---------------------------------------------

TWO_GB = 2 * 1024**3
SEND_AT_MOST = 64 * 1024**2  # a server that read on would get this much, never 2 GB


def raw_upload_request(channel: str, user, url: str) -> tuple[bytes, bytes]:
    """The headers and the start of a body that declares a 2 GB file, as each client sends it."""
    host = urlsplit(url).netloc
    file_head = (
        'Content-Disposition: form-data; name="file"; filename="huge.dill"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    boundary = "----dropscore-2gb"
    if channel == UI:
        client = Client()
        client.force_login(user)
        secret = secrets.token_hex(16)  # a CSRF cookie as the page sets it: 32 characters
        path = "/models/upload/"
        auth = f"Cookie: sessionid={client.cookies['sessionid'].value}; csrftoken={secret}\r\n"
        start = (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="csrfmiddlewaretoken"\r\n\r\n{secret}\r\n'
        )
    else:
        path = "/api/v1/models/"
        token, _ = Token.objects.get_or_create(user=user)
        auth = f"Authorization: Token {token.key}\r\n"
        start = ""
    start += f"--{boundary}\r\n{file_head}"
    end = f"\r\n--{boundary}--\r\n"
    length = len(start) + TWO_GB + len(end)
    headers = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{auth}"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    )
    return headers.encode(), start.encode() + b"\x80\x04"


@pytest.mark.parametrize("channel", [UI, API])
def test_a_2_gb_upload_is_refused_from_its_length_before_its_body_is_read(
    channel, live_server, owner, bucket, site, tmp_path
):
    headers, body_start = raw_upload_request(channel, owner, live_server.url)
    address = urlsplit(live_server.url)
    before = everything(owner, bucket)
    started = time.monotonic()

    with socket.create_connection((address.hostname, address.port), timeout=60) as connection:
        connection.sendall(headers + body_start)
        sent, chunk = 0, b"\0" * 1024**2
        # Keep sending the file, as a client would, until the server answers.
        while not select.select([connection], [], [], 0)[0] and sent < SEND_AT_MOST:
            connection.sendall(chunk)
            sent += len(chunk)
        response = http.client.HTTPResponse(connection)
        response.begin()
        body = response.read()
    elapsed = time.monotonic() - started

    assert response.status == 400, body
    key = "error" if channel == UI else "detail"
    message = json.loads(body)[key]
    assert message == "the file is larger than the limit of 512 MB (the upload is 2 GB)"
    assert sent < SEND_AT_MOST, "the server read on instead of answering"
    assert elapsed < 30
    assert list((tmp_path / "uploads").iterdir()) == []
    assert everything(owner, bucket) == before
