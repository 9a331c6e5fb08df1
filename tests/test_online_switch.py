"""The online switch of a deployment: `online` in the API (read, PATCHed by its owner or
staff), recorded in the history like any change, and independent of the schedule's status.
The model page's switch: tests/test_online_card.py."""

import io

import pytest

from scoring import record
from scoring.models import Deployment
from tests.factories import packages
from tests.factories.cast import api_client_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("bucket")]


def upload(client, name="churn") -> dict:
    data = io.BytesIO(packages.dumps(packages.function_package()))
    response = client.post("/api/v1/models/", {"file": data, "name": name}, format="multipart")
    assert response.status_code == 201, response.content
    return response.json()


def patch(client, model_id: int, body: dict, **kwargs):
    return client.patch(f"/api/v1/models/{model_id}/", body, format="json", **kwargs)


def online_changes(model_id: int) -> list[tuple]:
    """The history's changes of `online`, newest first, as (who, via, before, after)."""
    return [
        (entry.actor.username if entry.actor else None, entry.additional_data.get("via"), *values)
        for entry in record.history(model_id)
        for field, values in entry.changes_dict.items()
        if field == "online" and values[0] != "None"  # the create lists every field
    ]


def test_a_new_model_is_not_online_and_the_api_says_so(api):
    model = upload(api)

    assert model["online"] is False
    assert api.get(f"/api/v1/models/{model['id']}/").json()["online"] is False
    assert api.get("/api/v1/models/").json()[0]["online"] is False


def test_the_owner_switches_a_model_online_and_off_and_the_history_records_who(api):
    model = upload(api)

    switched_on = patch(api, model["id"], {"online": True})
    assert switched_on.status_code == 200, switched_on.content
    assert switched_on.json()["online"] is True
    switched_off = patch(api, model["id"], {"online": False})
    assert switched_off.json()["online"] is False

    assert online_changes(model["id"]) == [
        ("alice", "api", "True", "False"),
        ("alice", "api", "False", "True"),
    ]


def test_staff_may_switch_anothers_model_online(api, staff):
    model = upload(api)

    response = patch(api_client_for(staff), model["id"], {"online": True})

    assert response.status_code == 200
    assert online_changes(model["id"]) == [("sam", "api", "False", "True")]


def test_another_user_cannot_switch_a_model_online(api, outsider_api):
    model = upload(api)

    assert patch(outsider_api, model["id"], {"online": True}).status_code == 404
    assert Deployment.objects.get(id=model["id"]).online is False


def test_pausing_the_schedule_leaves_the_model_online(api):
    model = upload(api)
    patch(api, model["id"], {"online": True})

    paused = patch(api, model["id"], {"status": "paused"}).json()

    assert (paused["status"], paused["online"]) == ("paused", True)
    assert paused["next_run_at"] is None


def test_switching_online_off_leaves_the_schedule_running(api):
    model = upload(api)
    patch(api, model["id"], {"online": True})

    switched_off = patch(api, model["id"], {"online": False}).json()

    assert (switched_off["status"], switched_off["online"]) == ("active", False)
    assert switched_off["next_run_at"] is not None


def test_a_paused_model_may_be_switched_online_and_stays_paused(api):
    model = upload(api)
    patch(api, model["id"], {"status": "paused"})

    switched_on = patch(api, model["id"], {"online": True}).json()

    assert (switched_on["status"], switched_on["online"]) == ("paused", True)


def test_a_model_without_a_valid_champion_may_still_be_switched_on(api):
    """Its endpoint answers 409 until a version is valid; the model page says so."""
    model = upload(api)  # no worker: its only version stays pending, no champion
    assert model["current_version"] is None

    assert patch(api, model["id"], {"online": True}).json()["online"] is True


def test_a_form_patch_without_online_leaves_it_as_it_is(api):
    """DRF reads a form body's missing boolean as false; a PATCH changes what it names only."""
    model = upload(api)
    patch(api, model["id"], {"online": True})

    response = api.patch(
        f"/api/v1/models/{model['id']}/", {"email": "risk@bank.example"}, format="multipart"
    )

    assert response.status_code == 200, response.content
    assert (response.json()["email"], response.json()["online"]) == ("risk@bank.example", True)


def test_a_bad_online_value_is_a_400_with_a_message_and_changes_nothing(api):
    model = upload(api)

    response = patch(api, model["id"], {"online": "sometimes"})

    assert response.status_code == 400
    assert "online" in response.json()["detail"]
    assert Deployment.objects.get(id=model["id"]).online is False
