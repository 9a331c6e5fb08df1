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

import http.client
import io
import json
import os
import re
import resource
import secrets
import select
import socket
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from django.test import Client
from django.utils import timezone
from django.utils.html import escape
from rest_framework.authtoken.models import Token

from scoring.models import Deployment, PackageVersion, Quota, ScoringRun
from scoring.packages import deployments, quotas
from scoring.packages.schedules import PRESETS
from scoring.runs import dispatch
from tests.factories import packages
from tests.factories.cast import api_client_for
from tests.flows import WORKER_SANDBOX_TIMEOUT, start_worker, stop_worker

pytestmark = pytest.mark.django_db(transaction=True)

SANDBOX_MEMORY_MB = 256
MIN_INTERVAL = 5
UPLOAD, VALIDATION, SAFE = "refused at upload", "invalid after validation", "stored safely"
UI, API = "ui", "api"


# --- the packages --------------------------------------------------------------


def good() -> bytes:
    return packages.dumps(packages.function_package())


def padded(extra: int) -> bytes:
    """A real package grown by `extra` bytes of meta."""
    return packages.dumps(packages.function_package(meta={"pad": "x" * extra}))


def package_of(size: int) -> bytes:
    extra = size
    while len(data := padded(extra)) != size:
        extra += size - len(data)
    return data


@cache
def bad(name: str) -> bytes:
    """A package of tests/packages.bad_packages (none of those used here writes a marker)."""
    return packages.bad_packages(Path("/nonexistent"))[name][0]


def zip_file() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model.pkl", b"\x80\x04not really")
    return buffer.getvalue()


def proba(value: float = 0.5, **keys) -> bytes:
    return packages.dumps({"model": packages.Proba(value), "features": ["age"], **keys})


NOT_A_PICKLE = (
    "this file is not a pickle: a .dill or .pkl package made with dill.dump starts "
    "with the pickle header (0x80 and a protocol from 2 to 5)"
)
EVERY_MINUTE = (
    "schedule '* * * * *' runs every minute; "
    f"this site allows at most one run every {MIN_INTERVAL} minutes"
)
UNKNOWN_ZONE = "unknown time zone 'Mars/Olympus_Mons': use an IANA name such as 'Europe/London'"
INJECTED_EMAIL = "a@bank.example\r\nBcc: all@evil.example"
OVER_QUOTA = package_of(20 * 1024)


# --- the table -----------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    stage: str
    # What the user reads: exact text, a pattern where a figure varies, or one per channel.
    # For SAFE cases: the model's name.
    message: "str | re.Pattern | dict[str, str]"
    package: Callable[[], bytes | None] = good  # None: the form is sent without a file
    fields: dict = field(default_factory=dict)  # as the API names them; the UI maps a cron
    filename: str = "churn.dill"
    setup: Callable | None = None  # (user, settings) -> None, before the "nothing changed" look
    stored_as: str = ""  # SAFE: the only key in the bucket
    precondition: Callable | None = None  # (user, validated) -> None; may xfail the case


def same_file_first(user, settings) -> None:
    deploy_directly(user, good(), "churn")


def one_model_quota(user, settings) -> None:
    settings.QUOTA_ACTIVE_MODELS = 1
    deploy_directly(user, padded(10), "first")


def small_byte_quota(user, settings) -> None:
    Quota.objects.create(user=user, bytes=10 * 1024)


def sandbox_limits_processes(user, validated) -> None:
    """Send a fork bomb only to a sandbox with a process limit that counts its own processes:
    RLIMIT_NPROC counts per user, and does not bind root. A probe package tells."""
    load = packages.RunsAtLoad
    probe = proba(
        meta={"uid": load(os.getuid), "nproc": load(resource.getrlimit, resource.RLIMIT_NPROC)}
    )
    version = validated(deploy_directly(user, probe, "probe"))
    deployments.delete(version.deployment)
    meta = version.package["meta"]
    if meta["uid"] == 0 or meta["nproc"][0] == resource.RLIM_INFINITY:
        pytest.xfail(
            f"the sandbox has no process limit of its own (uid {meta['uid']}, RLIMIT_NPROC "
            f"{meta['nproc']}): a fork bomb is not sent to it"
        )


def package_limit(limit: int):
    def setup(user, settings) -> None:
        settings.MAX_PACKAGE_BYTES = limit

    return setup


CASES = [
    # -- refused at upload, before anything is stored --
    Case("random bytes", UPLOAD, NOT_A_PICKLE, lambda: bytes(range(13, 256)) * 40),
    Case("a text file", UPLOAD, NOT_A_PICKLE, lambda: b"model = churn\nfeatures = age\n"),
    Case("a zip file", UPLOAD, NOT_A_PICKLE, zip_file, filename="model.zip"),
    Case("an empty file", UPLOAD, "the file is empty", lambda: b""),
    Case(
        "no file at all",
        UPLOAD,
        {UI: "choose a .dill or .pkl package file to upload", API: "file: No file was submitted."},
        lambda: None,
        fields={"name": "churn"},
    ),
    Case(
        "a request over the package size limit",
        UPLOAD,
        "the file is larger than the limit of 64 KB (the upload is 2 MB)",
        lambda: b"\x80\x04" + b"\0" * 2 * 1024**2,
        setup=package_limit(64 * 1024),
    ),
    Case(
        "a file just over the size limit",  # the request passes the length check, the stream not
        UPLOAD,
        "the file is larger than the limit of 1 MB",
        lambda: b"\x80\x04" + b"\0" * 1024**2,
        setup=package_limit(1024**2),
    ),
    Case(
        "a package larger than the user's storage quota",
        UPLOAD,
        "this package (20 KB) would bring your storage to 20 KB of 10 KB: "
        "delete old versions or models first",
        lambda: OVER_QUOTA,
        setup=small_byte_quota,
    ),
    Case(
        "a new model over the active-model quota",
        UPLOAD,
        "you have 1 of 1 active models: pause or delete one before deploying another",
        setup=one_model_quota,
    ),
    Case(
        "the same file as the current version",
        UPLOAD,
        "this file is the same as the current version v1 of churn",
        fields={"name": "churn"},
        setup=same_file_first,
    ),
    Case(
        "a path in the name field",
        UPLOAD,
        "name '../../etc/passwd' must not contain '/', '\\' or '..'",
        fields={"name": "../../etc/passwd"},
    ),
    Case(
        "a name over 100 characters",
        UPLOAD,
        "name must be at most 100 characters",
        fields={"name": "churn" * 21},
    ),
    Case(
        "a name with a zero-width space",
        UPLOAD,
        "name must not contain control characters",
        fields={"name": "churn\u200bmodel"},
    ),
    Case(
        "a name with a right-to-left override",  # "churn\u202eldb.exe" shows as "churnexe.bdl"
        UPLOAD,
        "name must not contain control characters",
        fields={"name": "churn\u202eldb.exe"},
    ),
    Case(
        "a name of emoji only",
        UPLOAD,
        "name '🚀🔥' must contain at least one letter or digit",
        fields={"name": "🚀🔥"},
    ),
    Case(
        "a cron that fires every minute",
        UPLOAD,
        EVERY_MINUTE,
        fields={"schedule": "* * * * *"},
    ),
    Case(
        "a cron with a minute out of range",
        UPLOAD,
        "schedule '61 * * * *' is not a valid cron expression: Bad minute",
        fields={"schedule": "61 * * * *"},
    ),
    Case(
        "a schedule that is neither a preset nor a cron",
        UPLOAD,
        "schedule 'hourly' is neither a preset (daily, weekly, monthly) "
        "nor a 5-field cron expression (minute hour day month weekday)",
        fields={"schedule": "hourly"},
    ),
    Case("an unknown time zone", UPLOAD, UNKNOWN_ZONE, fields={"timezone": "Mars/Olympus_Mons"}),
    Case(
        "an email with an injected header",
        UPLOAD,
        f"email {INJECTED_EMAIL!r} is not a single valid address",
        fields={"email": INJECTED_EMAIL},
    ),
    # -- stored, but made safe --
    # A file name's folders are dropped (Django keeps the base name); the key is made by the
    # server. Names keep any script: letters and digits of any language, spaces, an emoji
    # beside letters (the slug, and so the key, drops it). Refused above: invisible control
    # or format characters (zero-width, bidi overrides) and names with no letter or digit.
    Case(
        "a path in the file name",
        SAFE,
        "x",
        filename="../../x.dill",
        stored_as="alice/x/v1.dill",
    ),
    Case(
        "a Windows path in the file name",
        SAFE,
        "evil",
        filename="..\\..\\evil.dill",
        stored_as="alice/evil/v1.dill",
    ),
    Case(
        "a Cyrillic name",
        SAFE,
        "Модель оттока",
        fields={"name": "Модель оттока"},
        stored_as="alice/модель-оттока/v1.dill",
    ),
    Case(
        "a right-to-left name",
        SAFE,
        "نموذج التسرب",
        fields={"name": "نموذج التسرب"},
        stored_as="alice/نموذج-التسرب/v1.dill",
    ),
    Case(
        "a name with an emoji",
        SAFE,
        "churn 🚀",
        fields={"name": "churn 🚀"},
        stored_as="alice/churn/v1.dill",
    ),
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
        "a package cron that fires every minute",
        VALIDATION,
        f"'schedule': {EVERY_MINUTE}",
        lambda: bad("cron every minute"),
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


def params(cases):
    return [
        pytest.param(case, channel, id=f"{channel}: {case.name}")
        for case in cases
        for channel in (UI, API)
    ]


# --- fixtures ------------------------------------------------------------------


@pytest.fixture(scope="module")
def validating_worker(worker_env, celery_app_configured, state_dir):
    """A worker whose sandboxes have a low memory limit, on a queue of this module's own."""
    app, queue = celery_app_configured
    own_queue = f"{queue}-bad-input"
    env = {
        **worker_env,
        "SANDBOX_MEMORY_BYTES": str(SANDBOX_MEMORY_MB * 1024**2),
        "MIN_SCHEDULE_INTERVAL_MINUTES": str(MIN_INTERVAL),
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
    settings.MIN_SCHEDULE_INTERVAL_MINUTES = MIN_INTERVAL
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


def deploy_directly(user, data: bytes, name: str) -> PackageVersion:
    return deployments.deploy(user, io.BytesIO(data), f"{name}.dill", len(data), name=name)


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


@pytest.mark.parametrize("case, channel", params(c for c in CASES if c.stage == UPLOAD))
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


@pytest.mark.parametrize("case, channel", params(c for c in CASES if c.stage == SAFE))
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


@pytest.mark.parametrize("case, channel", params(c for c in CASES if c.stage == VALIDATION))
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
    ({"schedule": "* * * * *"}, EVERY_MINUTE),
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
        assert f'<div class="flash error">{escape(message)}</div>' in response.content.decode()
    else:
        response = api_client_for(owner).patch(
            f"/api/v1/models/{deployment.id}/", fields, format="json"
        )
        assert response.status_code == 400
        assert response.json()["detail"] == message
    assert everything(owner, bucket) == before


OVER_A_VALID_VERSION = [
    c
    for c in CASES
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
    assert deployment.current_version == first
    shown = api_client_for(owner).get(f"/api/v1/models/{deployment.id}/").json()
    assert (shown["current_version"], shown["latest_version"]["number"]) == (1, 2)
    page = drop_zone_client(owner).get(f"/models/{deployment.id}/").content.decode()
    assert "scoring uses v1" in page
    assert bucket() == ["alice/churn/v1.dill", "alice/churn/v2.dill"]


def test_a_package_just_inside_the_rules_is_valid_and_its_settings_apply(
    owner, validated, validating_worker
):
    """The checks above are no stricter than they say: a cron at the site's minimum interval
    with a time zone applies where the upload gave no schedule; a near-miss key is a warning."""
    package = packages.function_package(
        schedule=f"*/{MIN_INTERVAL} * * * *", timezone="Europe/London", Meta={"author": "ana"}
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
