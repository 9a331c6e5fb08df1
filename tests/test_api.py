"""The REST API of DESIGN.md: token auth, every endpoint, owner-only access, JSON errors."""

import io
import sys

import pytest

from scoring.models import Deployment, PackageVersion
from tests.factories import packages

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("bucket")]


def upload(client, data=None, **fields):
    data = packages.dumps(packages.function_package()) if data is None else data
    return client.post("/api/v1/models/", {"file": io.BytesIO(data), **fields}, format="multipart")


def named_file(data: bytes, name: str) -> io.BytesIO:
    file = io.BytesIO(data)
    file.name = name
    return file


def test_it_deploys_a_package_and_answers_with_the_deployment(api):
    response = api.post(
        "/api/v1/models/",
        {
            "file": named_file(packages.dumps(packages.function_package()), "spend.dill"),
            "email": "alice@bank.example",
            "schedule": "30 5 * * 1-5",
            "timezone": "Europe/London",
        },
        format="multipart",
    )

    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["name"] == "spend"
    assert body["status"] == "active"
    assert body["schedule"] == "30 5 * * 1-5"
    assert body["timezone"] == "Europe/London"
    assert body["email"] == "alice@bank.example"
    assert body["next_run_at"]
    assert body["latest_version"]["number"] == 1
    assert body["latest_version"]["validation"] == {"state": "pending", "message": ""}
    assert [v["number"] for v in body["versions"]] == [1]


def test_the_same_name_makes_a_new_version(api):
    upload(api, name="churn")
    response = upload(api, packages.dumps(packages.function_package(meta={"v": 2})), name="churn")

    assert response.status_code == 201
    assert [v["number"] for v in response.json()["versions"]] == [2, 1]


@pytest.mark.parametrize(
    "data, fields, message",
    [
        (b"not a pickle at all", {}, "this file is not a pickle"),
        (b"", {}, "the file is empty"),
        (None, {"name": "../secrets"}, "must not contain '/'"),
        (None, {"schedule": "every minute"}, "neither a preset"),
        (None, {"email": "a@b.example\nBcc: c@d.example"}, "not a single valid address"),
        (None, {"timezone": "Nowhere/Land"}, "unknown time zone"),
    ],
)
def test_bad_uploads_get_a_json_message_and_change_nothing(api, bucket, data, fields, message):
    response = upload(api, data, **fields)

    assert response.status_code == 400
    assert message in response.json()["detail"]
    assert not Deployment.objects.exists()
    assert bucket() == []


def test_an_upload_without_a_file_says_so(api):
    response = api.post("/api/v1/models/", {"name": "x"}, format="multipart")
    assert response.status_code == 400
    assert response.json()["detail"].startswith("file:")


def test_an_oversized_upload_is_cut_off_with_a_message(api, settings):
    settings.MAX_PACKAGE_BYTES = 64 * 1024
    response = upload(api, packages.dumps(packages.function_package()) + b"\0" * 200_000)
    assert response.status_code == 400
    assert "larger than the limit" in response.json()["detail"]
    assert not Deployment.objects.exists()


def test_a_fleet_is_listed_a_page_at_a_time_when_a_limit_is_asked(api):
    for name in ("c", "a", "b"):
        assert upload(api, name=name).status_code == 201

    first = api.get("/api/v1/models/?limit=2").json()
    rest = api.get(first["next"]).json()

    assert first["count"] == 3 and [d["name"] for d in first["results"]] == ["a", "b"]
    assert [d["name"] for d in rest["results"]] == ["c"] and rest["next"] is None
    assert [d["name"] for d in api.get("/api/v1/models/").json()] == ["a", "b", "c"]


def test_it_lists_reads_updates_and_deletes_a_deployment(api, bucket):
    deployment_id = upload(api, name="churn").json()["id"]

    assert [d["name"] for d in api.get("/api/v1/models/").json()] == ["churn"]
    assert api.get(f"/api/v1/models/{deployment_id}/").json()["name"] == "churn"

    patched = api.patch(
        f"/api/v1/models/{deployment_id}/",
        {"status": "paused", "schedule": "weekly", "email": "risk@bank.example"},
        format="json",
    )
    assert patched.status_code == 200
    assert (patched.json()["status"], patched.json()["schedule"]) == ("paused", "weekly")
    assert patched.json()["next_run_at"] is None
    assert patched.json()["email"] == "risk@bank.example"

    resumed = api.patch(f"/api/v1/models/{deployment_id}/", {"status": "active"}, format="json")
    assert resumed.json()["next_run_at"] is not None

    assert api.delete(f"/api/v1/models/{deployment_id}/").status_code == 204
    assert api.get(f"/api/v1/models/{deployment_id}/").status_code == 404
    assert bucket() == []


@pytest.mark.parametrize(
    "body, message",
    [
        ({"schedule": "61 * * * *"}, "not a valid cron expression"),
        ({"status": "running"}, "status:"),
        ({"email": "not-an-email"}, "not a single valid address"),
    ],
)
def test_a_bad_patch_is_a_400_with_a_message(api, body, message):
    deployment_id = upload(api).json()["id"]
    response = api.patch(f"/api/v1/models/{deployment_id}/", body, format="json")
    assert response.status_code == 400
    assert message in response.json()["detail"]


def test_put_is_not_allowed(api):
    deployment_id = upload(api).json()["id"]
    assert api.put(f"/api/v1/models/{deployment_id}/", {}, format="json").status_code == 405


def test_it_needs_a_valid_token(client, api):
    assert client.get("/api/v1/models/").status_code == 401
    api.credentials(HTTP_AUTHORIZATION="Token 0000000000000000000000000000000000000000")
    response = api.get("/api/v1/models/")
    assert response.status_code == 401
    assert response.json()["detail"] == "Invalid token."


def test_another_users_deployment_is_a_404_for_every_method(api, outsider_api):
    deployment_id = upload(api, name="churn").json()["id"]

    assert outsider_api.get("/api/v1/models/").json() == []
    assert outsider_api.get(f"/api/v1/models/{deployment_id}/").status_code == 404
    assert (
        outsider_api.patch(
            f"/api/v1/models/{deployment_id}/", {"status": "paused"}, format="json"
        ).status_code
        == 404
    )
    assert outsider_api.delete(f"/api/v1/models/{deployment_id}/").status_code == 404

    # The same name makes the outsider a model of their own, not a version of Alice's.
    theirs = upload(outsider_api, name="churn").json()
    assert theirs["id"] != deployment_id
    assert theirs["owner"] == "mallory"
    deployment = Deployment.objects.get(id=deployment_id)
    assert (deployment.status, deployment.versions.count()) == ("active", 1)


def test_staff_see_every_deployment(api, staff):
    from tests.factories.cast import api_client_for

    upload(api, name="churn")
    assert [d["owner"] for d in api_client_for(staff).get("/api/v1/models/").json()] == ["alice"]


def test_the_web_process_never_unpickles_an_upload(api, tmp_path):
    """An audit hook sees every global a pickle resolves in this process: there must be none."""
    resolved = []
    listening = True
    sys.addaudithook(
        lambda event, args: listening and event == "pickle.find_class" and resolved.append(args)
    )
    data, _ = packages.bad_packages(tmp_path)["shell command at load"]
    try:
        response = upload(api, data, name="shell")
    finally:
        listening = False

    assert response.status_code == 201
    assert resolved == []
    assert not (tmp_path / "sandbox-env.txt").exists()
    assert PackageVersion.objects.get().state == PackageVersion.State.PENDING


def test_the_openapi_schema_describes_the_endpoints(api):
    response = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert {"/api/v1/models/", "/api/v1/models/{id}/", "/api/v1/status/"} <= set(schema["paths"])
    assert (
        "multipart/form-data"
        in schema["paths"]["/api/v1/models/"]["post"]["requestBody"]["content"]
    )


def test_status_reports_each_part(api, worker):
    body = api.get("/api/v1/status/").json()
    assert body["database"]["ok"] and body["storage"]["ok"] and body["broker"]["ok"]
    assert body["workers"]["ok"], body["workers"]
