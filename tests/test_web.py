"""The server-rendered portal through Django's test client: login, my models, the drop zone,
the live status. The model page, its actions and access: tests/test_model_page.py."""

from urllib.parse import parse_qs, urlsplit

import pytest

from scoring.models import Deployment, PackageVersion
from scoring.packages.storage import human_bytes
from tests.factories import packages
from tests.factories.web import upload

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("bucket", "default_quotas"),
]


# --- login ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, path",
    [
        ("get", "/"),
        ("get", "/models/status/"),
        ("get", "/models/1/"),
        ("get", "/token/"),
        ("get", "/help/"),
        ("get", "/schedule-preview/?schedule=daily"),
        ("post", "/models/upload/"),
        ("post", "/models/1/pause/"),
        ("post", "/models/1/delete/"),
        ("post", "/token/"),
    ],
)
def test_it_sends_an_anonymous_user_to_the_login_page(client, method, path):
    response = getattr(client, method)(path)

    assert response.status_code == 302
    target = urlsplit(response.url)
    assert target.path == "/login/"
    assert parse_qs(target.query)["next"] == [path]


def test_it_lands_on_my_models_after_a_login_with_the_right_password(client, owner):
    response = client.post(
        "/login/", {"username": "alice", "password": "alice-password-123"}, follow=True
    )

    assert response.redirect_chain[-1] == ("/", 302)
    assert response.status_code == 200
    assert "<h1>My models</h1>" in response.content.decode()
    assert client.session.get("_auth_user_id") == str(owner.id)


def test_it_shows_the_error_for_a_wrong_password(client, owner):
    response = client.post("/login/", {"username": "alice", "password": "not-her-password"})

    assert response.status_code == 200
    assert "Your username and password didn't match" in response.content.decode()
    assert "_auth_user_id" not in client.session
    assert client.get("/").status_code == 302


# --- my models -----------------------------------------------------------------


def test_it_shows_the_drop_zone_and_an_empty_quota_on_my_models(alice):
    page = alice.get("/").content.decode()

    assert 'id="dropzone"' in page
    assert 'action="/models/upload/"' in page
    assert "Drop a model package here" in page
    assert '<span id="quota-text">0 of 10 active models, 0 B of 1 GB</span>' in page
    assert "No models yet" in page


def test_it_shows_the_uploaded_model_row_and_the_quota_it_uses(alice):
    data = packages.dumps(packages.function_package())
    assert upload(alice, data, name="spend").status_code == 201

    page = alice.get("/").content.decode()
    assert 'data-model="spend"' in page
    assert '<span class="badge pending">pending</span>' in page
    assert f"1 of 10 active models, {human_bytes(len(data))} of 1 GB" in page
    assert "No models yet" not in page


# --- the drop zone endpoint ----------------------------------------------------


def test_it_deploys_a_package_dropped_on_the_page(alice, owner, bucket):
    response = upload(
        alice,
        filename="churn.dill",
        email="risk@bank.example",
        schedule="custom",
        cron="30 5 * * 1-5",
        timezone="Europe/London",
    )

    assert response.status_code == 201, response.content
    deployment = Deployment.objects.get()
    assert response.json() == {"deployment": deployment.id, "name": "churn", "version": 1}
    assert (deployment.owner, deployment.email, deployment.schedule, deployment.timezone) == (
        owner,
        "risk@bank.example",
        "30 5 * * 1-5",
        "Europe/London",
    )
    assert deployment.next_run_at is not None
    assert bucket() == ["alice/churn/v1.dill"]


def test_it_makes_version_2_when_the_same_name_is_uploaded_again(alice, bucket):
    first = upload(alice, name="churn", schedule="weekly").json()
    second = upload(alice, packages.dumps(packages.function_package(meta={"v": 2})), name="churn")

    assert second.status_code == 201, second.content
    assert second.json() == {"deployment": first["deployment"], "name": "churn", "version": 2}
    assert Deployment.objects.count() == 1
    assert bucket() == ["alice/churn/v1.dill", "alice/churn/v2.dill"]


@pytest.mark.parametrize(
    "data, fields, message",
    [
        (b"not a pickle at all", {}, "this file is not a pickle"),
        (b"", {}, "the file is empty"),
        (None, {"schedule": "custom", "cron": "61 * * * *"}, "is not a valid cron expression"),
        (None, {"schedule": "hourly"}, "is neither a preset"),
        (None, {"email": "a@bank.example\nBcc: all@evil.example"}, "is not a single valid address"),
        (None, {"name": "../../etc/passwd"}, "must not contain '/', '\\' or '..'"),
        (None, {"timezone": "Nowhere/Land"}, "unknown time zone"),
    ],
    ids=[
        "not a pickle",
        "empty",
        "bad custom cron",
        "unknown preset",
        "header injection email",
        "path traversal name",
        "unknown time zone",
    ],
)
def test_it_refuses_a_bad_upload_with_a_clear_json_message_and_stores_nothing(
    browser, bucket, data, fields, message
):
    response = upload(browser, data, **fields)

    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert message in response.json()["error"]
    assert not Deployment.objects.exists()
    assert not PackageVersion.objects.exists()
    assert bucket() == []


def test_it_asks_for_a_file_when_none_was_sent(alice, bucket):
    response = alice.post("/models/upload/", {"name": "churn"})

    assert response.status_code == 400
    assert response.json() == {"error": "choose a .dill or .pkl package file to upload"}
    assert not Deployment.objects.exists()
    assert bucket() == []


def test_it_cuts_off_an_upload_over_the_size_limit(browser, bucket, settings):
    settings.MAX_PACKAGE_BYTES = 1024**2
    data = packages.dumps(packages.function_package()) + b"\0" * (1024**2 + 100_000)

    response = upload(browser, data, name="huge")

    assert response.status_code == 400
    assert response.json() == {"error": "the file is larger than the limit of 1 MB"}
    assert not Deployment.objects.exists()
    assert bucket() == []


def test_it_states_a_limit_under_one_megabyte_as_it_is(browser, settings):
    settings.MAX_PACKAGE_BYTES = 64 * 1024
    response = upload(browser, packages.dumps(packages.function_package()) + b"\0" * 200_000)

    assert response.status_code == 400
    assert "64 KB" in response.json()["error"]


@pytest.mark.parametrize(
    "data, message",
    [
        (b"not a pickle at all", "this file is not a pickle"),
        (b"\x80\x04" + b"\0" * (1024**2 + 100_000), "the file is larger than the limit of 1 MB"),
    ],
    ids=["not a pickle", "over the size limit"],
)
def test_the_upload_handlers_message_reaches_a_client_that_skips_csrf(
    alice, bucket, settings, data, message
):
    settings.MAX_PACKAGE_BYTES = 1024**2
    response = upload(alice, data, name="churn")

    assert response.status_code == 400
    assert message in response.json()["error"]
    assert bucket() == []


def test_it_refuses_the_same_file_as_the_current_version(alice, bucket):
    upload(alice, name="churn")
    response = upload(alice, name="churn")

    assert response.status_code == 400
    assert "is the same as the current version v1 of churn" in response.json()["error"]
    assert bucket() == ["alice/churn/v1.dill"]


def test_it_refuses_a_model_over_the_quota_before_storing_it(alice, bucket, settings):
    settings.QUOTA_ACTIVE_MODELS = 1
    assert upload(alice, name="first").status_code == 201

    other = packages.dumps(packages.function_package(meta={"v": 2}))
    response = upload(alice, other, name="second")

    assert response.status_code == 400
    assert "you have 1 of 1 active models" in response.json()["error"]
    assert list(Deployment.objects.values_list("name", flat=True)) == ["first"]
    assert bucket() == ["alice/first/v1.dill"]


# --- live status ----------------------------------------------------------------


def test_the_status_json_shows_a_pending_row_and_the_quota(alice):
    data = packages.dumps(packages.function_package())
    upload(alice, data, name="spend")

    response = alice.get("/models/status/")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"rows", "quota", "pending", "counts"}
    assert 'data-model="spend"' in body["rows"]
    assert '<span class="badge pending">pending</span>' in body["rows"]
    assert body["quota"] == f"1 of 10 active models, {human_bytes(len(data))} of 1 GB"
    assert body["pending"] is True


def test_the_status_json_shows_valid_and_stops_pending_after_validation(alice, worker, validated):
    upload(alice, name="spend")
    version = validated(PackageVersion.objects.get())
    assert version.state == PackageVersion.State.VALID, version.message

    body = alice.get("/models/status/").json()

    assert '<span class="badge valid">valid</span>' in body["rows"]
    assert "1 features · __call__" in body["rows"]
    assert body["pending"] is False


def row_of(page: str, name: str) -> str:
    """The HTML of a model's row in My models."""
    start = page.index(f'<tr data-model="{name}">')
    return page[start : page.index("</tr>", start)]


def test_a_model_that_cannot_be_scored_says_why_and_offers_a_fix_instead_of_pause(
    alice, worker, validated
):
    upload(alice, name="spend")
    broken = packages.dumps({"model": packages.NoPredict(), "features": ["age"]})
    upload(alice, broken, filename="broken.dill")
    for version in PackageVersion.objects.all():
        validated(version)
    model = Deployment.objects.get(name="broken")

    page = alice.get("/").content.decode()

    row = row_of(page, "broken")
    assert "cannot be scored" in row
    assert "model has no predict_proba or predict" in row
    assert ">Pause<" not in row and '<span class="badge active">' not in row
    assert f'href="/models/{model.id}/#upload-form">Upload a fixed version</a>' in row
    assert f'formaction="/models/{model.id}/delete/"' in row
    assert ">Pause<" in row_of(page, "spend")  # a valid model beside it is active as before
    assert "cannot be scored" not in row_of(page, "spend")
    model_page = alice.get(f"/models/{model.id}/").content.decode()
    assert ">Pause<" not in model_page
    assert 'href="#upload-form">Upload a fixed version' in model_page
