"""The record of changes (scoring.record, django-auditlog): who changed what, when, from what
to what, from the web or the API; validation as the system; API tokens; a reason; a deleted
model's record kept for staff; and the history as the page and the API show it."""

import hashlib

import pytest
from auditlog.models import LogEntry
from rest_framework.authtoken.models import Token

from scoring import record
from scoring.models import DeletedDeployment, Deployment
from scoring.packages import deployments
from tests.factories.cast import session
from tests.factories.web import package_file

pytestmark = pytest.mark.django_db(transaction=True)


def changes_of(deployment_id: int) -> list[tuple]:
    """The model's history as (who, via, what, changes), newest first."""
    return [
        (
            entry.actor.username if entry.actor else None,
            entry.additional_data.get("via"),
            entry.object_repr,
            entry.changes_dict,
        )
        for entry in record.history(deployment_id)
    ]


def upload_by_api(api, name="churn", **fields):
    response = api.post("/api/v1/models/", {"file": package_file(), "name": name, **fields})
    assert response.status_code == 201, response.content
    return response.json()


def test_a_settings_change_on_the_page_is_recorded_with_its_author_and_before_and_after(
    bucket, deployment, alice
):
    response = alice.post(
        f"/models/{deployment.id}/settings/",
        {"schedule": "weekly", "email": "risk@bank.example"},
        REMOTE_ADDR="10.1.2.3",
    )
    assert response.status_code == 302

    who, via, what, changed = changes_of(deployment.id)[0]
    assert (who, via, what) == ("alice", "web", "alice/alice-churn-q3")
    assert changed == {
        "schedule": ["daily", "weekly"],
        "email": ["alice@bank.example", "risk@bank.example"],
    }
    assert record.history(deployment.id).first().remote_addr == "10.1.2.3"


def test_an_api_change_made_with_a_token_is_recorded_with_the_tokens_user(bucket, api):
    model = upload_by_api(api, schedule="daily")

    response = api.patch(f"/api/v1/models/{model['id']}/", {"status": "paused"}, format="json")
    assert response.status_code == 200

    history = changes_of(model["id"])
    assert history[0] == ("alice", "api", "alice/churn", {"status": ["active", "paused"]})
    # The upload before it: the model and its first version, made by alice through the API.
    created = {what: changed for who, via, what, changed in history[1:] if who == "alice"}
    assert created["alice/churn v1"]["sha256"] == [
        "None",
        hashlib.sha256(package_file().read()).hexdigest(),
    ]
    assert created["alice/churn"]["schedule"] == ["None", "daily"]
    assert all(via == "api" for _, via, _, _ in history)


def test_a_validation_result_is_recorded_as_the_system(worker, bucket, api, validated):
    model = upload_by_api(api)
    deployment = Deployment.objects.get(id=model["id"])
    validated(deployment.versions.get())

    by_system = {
        what: changed
        for who, via, what, changed in changes_of(deployment.id)
        if (who, via) == (None, "system")
    }
    assert by_system["alice/churn v1"]["state"] == ["pending", "valid"]
    page = api.get(f"/api/v1/models/{deployment.id}/history/").json()
    assert page["results"][0]["actor"] == "system"
    # Valid, the first version became the champion: the system's doing too, named as people
    # read it (auditlog keeps the version's id).
    champions = [
        (c["before"], c["after"])
        for entry in page["results"]
        for c in entry["changes"]
        if c["field"] == "champion" and c["after"]
    ]
    assert champions == [(None, "alice/churn v1")]


def test_a_token_made_and_revoked_is_recorded_and_its_key_never_is(owner):
    alice = session(owner)
    alice.post("/token/")
    key = Token.objects.get(user=owner).key
    alice.post("/token/", {"revoke": "1"})

    entries = LogEntry.objects.get_for_object(owner).order_by("timestamp", "id")
    assert [(e.actor, e.additional_data["via"], e.changes_dict) for e in entries] == [
        (owner, "web", {"API token": ["none", "made"]}),
        (owner, "web", {"API token": ["made", "revoked"]}),
    ]
    assert not LogEntry.objects.filter(object_pk=key).exists()
    assert key not in str(list(LogEntry.objects.values()))
    shown = alice.get("/token/").content.decode()
    rows = shown[shown.index('id="token-history"') :].split("<tr>")[1:]
    assert ["revoked" in rows[0], "made" in rows[1]] == [True, True]  # newest first
    assert all("by alice via web" in row for row in rows)


def validated_upload(api, validated) -> Deployment:
    """An upload whose validation is done: its entries come before any the test makes."""
    deployment = Deployment.objects.get(id=upload_by_api(api)["id"])
    validated(deployment.versions.get())
    return deployment


def test_a_reason_goes_with_the_changes_made_under_it(worker, bucket, api, validated):
    deployment = validated_upload(api, validated)

    with record.reason("the challenger ranked better for three weeks"):
        deployments.update(deployment, email="risk@bank.example")
    deployments.update(deployment, email="alice@bank.example")

    newest, with_reason = api.get(f"/api/v1/models/{deployment.id}/history/").json()["results"][:2]
    assert newest["reason"] == ""
    assert with_reason["reason"] == "the challenger ranked better for three weeks"
    assert with_reason["changes"] == [
        {"field": "email", "before": "alice@bank.example", "after": "risk@bank.example"}
    ]


def test_the_history_is_paged_newest_first(worker, bucket, api, validated):
    deployment = validated_upload(api, validated)
    for number in range(60):
        deployments.update(deployment, email=f"owner{number}@bank.example")

    first = api.get(f"/api/v1/models/{deployment.id}/history/").json()
    rest = api.get(f"/api/v1/models/{deployment.id}/history/?page=2").json()["results"]

    assert len(first["results"]) == 50 and first["count"] == 50 + len(rest)
    emails = [
        change["after"]
        for entry in first["results"] + rest
        for change in entry["changes"]
        if entry["action"] == "update" and change["field"] == "email"
    ]
    # After them, the package's own email if validation set it.
    assert emails[:60] == [f"owner{n}@bank.example" for n in range(59, -1, -1)]
    assert [entry["action"] for entry in rest[-2:]] == ["create", "create"]  # the upload, last


def test_a_deleted_models_record_stays_and_staff_read_it_in_the_admin(bucket, api, superuser):
    model = upload_by_api(api)
    assert api.delete(f"/api/v1/models/{model['id']}/").status_code == 204

    assert not Deployment.objects.filter(id=model["id"]).exists()
    history = changes_of(model["id"])
    assert [(who, via, what) for who, via, what, _ in history[:2]] == [
        ("alice", "api", "alice/churn"),
        ("alice", "api", "alice/churn v1"),
    ]
    assert record.history(model["id"]).first().action == LogEntry.Action.DELETE
    assert history[0][3]["name"] == ["churn", "None"]
    tombstone = DeletedDeployment.objects.get(deployment_id=model["id"])
    assert (tombstone.name, tombstone.owner.username) == ("alice/churn", "alice")

    page = session(superuser).get(f"/admin/scoring/deleteddeployment/{tombstone.id}/change/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "delete alice/churn" in text and "via api" in text


def test_the_model_page_shows_who_changed_what(bucket, deployment, alice):
    alice.post(f"/models/{deployment.id}/pause/")

    text = alice.get(f"/models/{deployment.id}/").content.decode()
    history = text[text.index('id="history"') :]
    assert "update alice/alice-churn-q3" in history
    assert "active" in history and "paused" in history and "via web" in history


def test_a_change_by_a_user_deleted_since_still_names_them(bucket, deployment, alice, owner):
    alice.post(f"/models/{deployment.id}/pause/")
    owner.delete()

    paused = record.history(deployment.id).filter(action=LogEntry.Action.UPDATE).first()
    assert paused.actor is None
    assert record.describe(paused)["actor"] == "alice@bank.example"


def test_a_model_deleted_in_the_admin_goes_as_in_the_portal_and_is_recorded(bucket, api, superuser):
    model = upload_by_api(api)

    root = session(superuser)
    response = root.post(f"/admin/scoring/deployment/{model['id']}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert bucket() == []  # its package left S3
    assert DeletedDeployment.objects.filter(deployment_id=model["id"]).exists()
    entry = record.history(model["id"]).first()
    assert (entry.actor, entry.action, entry.additional_data["via"]) == (
        superuser,
        LogEntry.Action.DELETE,
        "admin",
    )


def champion_changes(deployment: Deployment, count: int) -> None:
    """`count` new versions, each made the champion in turn (an entry each)."""
    for number in range(2, count + 2):
        version = deployment.versions.create(
            number=number,
            file=f"v{number}.dill",
            filename=f"v{number}.dill",
            size=1,
            sha256="0" * 64,
            state="valid",
        )
        deployment.champion = version
        deployment.save()


@pytest.mark.parametrize("count", [1, 5])
def test_a_foreign_key_in_the_history_reads_as_the_row_it_names_in_one_query(count, owner):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from tests.factories.reports import deployment as made

    owner = Deployment.objects.get(id=made(owner, "churn").id)
    champion_changes(owner, count)

    with CaptureQueriesContext(connection) as queries:
        described = record.describe_all(record.history(owner.id))
    champions = [c["after"] for d in described for c in d["changes"] if c["field"] == "champion"]
    # Newest first; the first champion was set by the factory without an entry.
    assert champions == [f"alice/churn v{n}" for n in range(count + 1, 1, -1)]
    # The entries, then the versions and the person (the model's owner) they name: not a
    # query per entry.
    assert len(queries) == 3, [q["sql"] for q in queries.captured_queries]


def test_a_create_leaves_out_the_fields_it_left_blank(bucket, api):
    model = upload_by_api(api)

    page = api.get(f"/api/v1/models/{model['id']}/history/").json()
    created = [e for e in page["results"] if e["object"] == "alice/churn v1"][-1]
    assert "message" not in [c["field"] for c in created["changes"]]
    assert "filename" in [c["field"] for c in created["changes"]]
