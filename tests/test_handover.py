"""Handing a model over to a team (scoring.packages.handover): its packages move in the
models bucket, its runs, scores and history stay, its new team sees it and its former owner
no longer does; every refusal changes nothing; an S3 failure mid-copy leaves the model
whole; the models of people who left keep scoring until staff hand them over."""

import csv
import hashlib
from datetime import date, timedelta

import pytest
from auditlog.models import LogEntry
from django.conf import settings
from django.contrib.auth.models import User

from scoring.engine import package_cache
from scoring.models import ChampionChange, Deployment, PackageVersion, ScoringRun, Team
from scoring.packages import handover, storage, teams
from scoring.runs import dispatch
from tests.factories import packages
from tests.factories.cast import api_client_for, session
from tests.faults import closed_port
from tests.flows import deploy, make_due, wait_for_runs

pytestmark = [pytest.mark.django_db(transaction=True)]

TODAY = date.today()
YESTERDAY = TODAY - timedelta(days=1)


# --- the cast beside alice (a person's models), mallory and sam (staff) ---------------------


@pytest.fixture
def carol(db):
    """Manager of the team Risk."""
    return User.objects.create_user("carol", "carol@bank.example", "carol-password-123")


@pytest.fixture
def dave(db):
    """A member of the team Risk."""
    return User.objects.create_user("dave", "dave@bank.example", "dave-password-123")


@pytest.fixture
def risk(carol, dave) -> Team:
    team = teams.make_team("Risk", by=carol)
    teams.set_role(team, dave, "member")
    return team


def objects(prefix: str = "") -> dict[str, tuple[str, str]]:
    """{key: (sha256 of its bytes, the sha256 in its metadata)} of the models bucket."""
    s3 = storage.client()
    found = {}
    listing = s3.list_objects_v2(Bucket=settings.MODELS_BUCKET, Prefix=prefix)
    for item in listing.get("Contents", []):
        stored = s3.get_object(Bucket=settings.MODELS_BUCKET, Key=item["Key"])
        data = stored["Body"].read()
        found[item["Key"]] = (hashlib.sha256(data).hexdigest(), stored["Metadata"].get("sha256"))
    return found


def state() -> dict:
    """Every row and object a hand-over could change."""
    return {
        "deployments": list(Deployment.objects.order_by("pk").values()),
        "versions": list(PackageVersion.objects.order_by("pk").values()),
        "runs": list(ScoringRun.objects.order_by("pk").values("id", "version", "status")),
        "history": LogEntry.objects.count(),
        "objects": objects(),
    }


def two_versions(owner, validated, **settings_) -> Deployment:
    """A model `churn` with two valid versions (v2 the champion)."""
    deploy(owner, packages.function_package(), "churn", validated, **settings_)
    second = packages.function_package(meta={"trained": "2026-11"})
    return Deployment.objects.get(id=deploy(owner, second, "churn", validated, **settings_).id)


def csv_rows(response) -> list[list[str]]:
    text = b"".join(response.streaming_content).decode()
    return list(csv.reader(text.splitlines()))


# --- the hand-over ---------------------------------------------------------------------------


def test_hand_over_moves_the_packages_and_keeps_the_runs_scores_and_history(
    worker, bucket, owner, staff, risk, carol, dave, validated, settings, tmp_path
):
    model = two_versions(owner, validated)
    run = dispatch.score_now(model, TODAY)
    (run,) = wait_for_runs([model.id])
    assert run.status == "succeeded", run.error
    versions = {v.number: v for v in model.versions.all()}
    before = objects()
    assert set(before) == {"alice/churn/v1.dill", "alice/churn/v2.dill"}
    # What a worker that began a run just before the switch holds: the old key.
    in_flight = PackageVersion.objects.get(id=versions[2].id)

    response = api_client_for(staff).post(
        f"/api/v1/models/{model.id}/hand_over/",
        {"team": "risk", "reason": "alice moved to payments; Risk runs churn now"},
        format="json",
    )

    assert response.status_code == 200, response.content
    assert (response.json()["owner"], response.json()["team"]) == ("team/risk", "risk")
    after = objects()
    assert set(after) == {"teams/risk/churn/v1.dill", "teams/risk/churn/v2.dill"}
    for number, version in versions.items():
        moved = after[f"teams/risk/churn/v{number}.dill"]
        assert moved == before[f"alice/churn/v{number}.dill"] == (version.sha256, version.sha256)
        version.refresh_from_db()
        assert version.file.name == f"teams/risk/churn/v{number}.dill"
    model.refresh_from_db()
    assert (model.owner, model.team, model.champion_id) == (None, risk, versions[2].id)

    # Dave of Risk sees it: its run, its scores as CSV, its packages, its history.
    team_api = api_client_for(dave)
    assert team_api.get(f"/api/v1/runs/{run.id}/").json()["status"] == "succeeded"
    rows = csv_rows(team_api.get(f"/api/v1/runs/{run.id}/scores/?format=csv"))
    assert (rows[0], len(rows)) == (["entity_id", "score"], 1 + 500)
    package = team_api.get(f"/api/v1/models/{model.id}/versions/1/download/")
    assert hashlib.sha256(b"".join(package.streaming_content)).hexdigest() == versions[1].sha256
    history = team_api.get(f"/api/v1/models/{model.id}/history/").json()["results"]
    (handed,) = [entry for entry in history if entry["reason"]]
    assert (handed["actor"], handed["via"], handed["object"]) == ("sam", "api", "team/risk/churn")
    assert handed["reason"] == "alice moved to payments; Risk runs churn now"
    assert {c["field"]: (c["before"], c["after"]) for c in handed["changes"]} == {
        "owner": ("alice", None),
        "team": (None, "Risk"),
        "email": ("alice@bank.example", ""),  # her reports go to the team now
    }
    page = session(dave).get(f"/models/{model.id}/").content.decode()
    assert "reason: alice moved to payments; Risk runs churn now" in page
    # Alice, not in Risk, no longer sees it, nor its runs.
    alice = api_client_for(owner)
    assert alice.get(f"/api/v1/models/{model.id}/").status_code == 404
    assert alice.get(f"/api/v1/runs/{run.id}/scores/?format=csv").status_code == 404
    assert alice.get("/api/v1/models/").json() == []

    # The worker that held the old key fetches the package from its new one.
    settings.PACKAGE_CACHE_DIR = str(tmp_path / "cache")
    fetched = package_cache.local_copies([in_flight])[in_flight.id]
    assert package_cache.sha256_of(fetched) == versions[2].sha256
    # And the model scores on as the team's, the earlier run beside the new one.
    dispatch.score_now(model, YESTERDAY)
    finished = wait_for_runs([model.id])
    assert sorted((r.date, r.status) for r in finished) == [
        (YESTERDAY, "succeeded"),
        (TODAY, "succeeded"),
    ], [r.error for r in finished]


def test_a_manager_of_two_teams_hands_a_model_from_one_to_the_other_on_its_page(
    worker, bucket, carol, dave, risk, validated
):
    collections = teams.make_team("Collections", by=carol)
    model = deploy(
        carol,
        packages.function_package(),
        "limits",
        validated,
        team="risk",
        email="risk@bank.example",
    )
    before = objects()
    page = session(carol)
    card = page.get(f"/models/{model.id}/").content.decode()
    assert 'id="hand-over"' in card and '<option value="collections">Collections</option>' in card
    assert '<option value="risk">' not in card  # its own team is not a target

    response = page.post(
        f"/models/{model.id}/hand_over/", {"team": "collections", "reason": "Risk split up"}
    )

    assert response.status_code == 302 and response["Location"] == f"/models/{model.id}/"
    model.refresh_from_db()
    assert (model.team, model.email) == (collections, "risk@bank.example")  # a list stays
    (version,) = model.versions.all()
    assert version.file.name == "teams/collections/limits/v1.dill"
    assert objects() == {"teams/collections/limits/v1.dill": before["teams/risk/limits/v1.dill"]}
    assert "is the team Collections&#x27;s now" in page.get(f"/models/{model.id}/").content.decode()
    assert session(dave).get(f"/models/{model.id}/").status_code == 404  # dave is Risk's only


def test_the_card_is_shown_only_to_who_may_hand_the_model_over_to_a_team_they_manage(
    worker, bucket, owner, staff, risk, dave, validated
):
    model = deploy(owner, packages.function_package(), "churn", validated)
    teams.set_role(risk, owner, "member")  # a member of Risk: no team alice manages
    assert 'id="hand-over"' not in session(owner).get(f"/models/{model.id}/").content.decode()
    teams.set_role(risk, owner, "manager")
    assert 'id="hand-over"' in session(owner).get(f"/models/{model.id}/").content.decode()
    assert 'id="hand-over"' in session(staff).get(f"/models/{model.id}/").content.decode()


# --- refusals: a clear message, nothing changed ---------------------------------------------


def refusals(carol, dave, owner):
    """(who, body, status, message) for each hand-over the portal refuses."""
    other = teams.make_team("Other", by=dave)  # dave manages Other, is a member of Risk
    return [
        (carol, {"team": "risk"}, 400, "reason: This field is required."),
        (carol, {"team": "risk", "reason": "   "}, 400, "reason: This field may not be blank."),
        (carol, {"team": "nowhere", "reason": "r"}, 400, "you are in no team named 'nowhere'"),
        (carol, {"team": "risk", "reason": "r"}, 400, "churn is the team Risk's already"),
        (dave, {"team": "other", "reason": "r"}, 403, "you are a member of the team Risk: only"),
        (owner, {"team": "other", "reason": "r"}, 404, "No Deployment matches the given query."),
        (carol, {"team": other.slug, "reason": "r"}, 400, "you are in no team named 'other'"),
    ]


def test_refused_hand_overs_change_nothing(worker, bucket, owner, carol, dave, risk, validated):
    model = two_versions(carol, validated, team="risk")
    cases = refusals(carol, dave, owner)
    clients = {who: api_client_for(who) for who in (carol, dave, owner)}  # tokens: recorded
    before = state()
    for who, body, code, message in cases:
        response = clients[who].post(f"/api/v1/models/{model.id}/hand_over/", body, format="json")
        assert (response.status_code, response.json()["detail"][: len(message)]) == (
            code,
            message,
        ), body
        assert state() == before, body


def test_a_person_managing_only_the_target_may_not_hand_over_anothers_model(
    worker, bucket, owner, carol, dave, risk, validated
):
    """Alice's own model, alice only a member of Risk: her side is hers, the target not."""
    model = deploy(owner, packages.function_package(), "churn", validated)
    teams.set_role(risk, owner, "member")
    alice = api_client_for(owner)
    before = state()

    response = alice.post(
        f"/api/v1/models/{model.id}/hand_over/", {"team": "risk", "reason": "r"}, format="json"
    )
    page = session(owner).post(f"/models/{model.id}/hand_over/", {"team": "risk", "reason": "r"})

    assert response.status_code == 403
    assert (
        response.json()["detail"] == "only a manager of the team Risk may hand a model over to it"
    )
    assert page.status_code == 403
    assert state() == before


def test_a_name_the_team_has_a_waiting_change_and_the_quota_are_refused(
    worker, bucket, owner, staff, carol, risk, validated
):
    model = two_versions(owner, validated)
    theirs = deploy(carol, packages.function_package(), "churn", validated, team="risk")
    sam = api_client_for(staff)

    def refused(message: str) -> None:
        before = state()
        response = sam.post(
            f"/api/v1/models/{model.id}/hand_over/", {"team": "risk", "reason": "r"}, format="json"
        )
        assert (response.status_code, response.json()["detail"]) == (400, message)
        assert state() == before

    refused("the team Risk has a model named 'churn' already: rename or delete one of them first")
    Deployment.objects.filter(id=theirs.id).update(name="churn-old", slug="churn-old")
    change = ChampionChange.objects.create(
        deployment=model,
        version=model.versions.get(number=1),
        kind=ChampionChange.Kind.ROLLBACK,
        reason="v2 drifts",
        requested_by=owner,
    )
    refused(
        "the rollback to v1 is waiting for approval: approve or withdraw it before handing "
        "the model over (its approvers would change)"
    )
    change.status = ChampionChange.Status.WITHDRAWN
    change.save()
    used = sum(PackageVersion.objects.filter(deployment__team=risk).values_list("size", flat=True))
    Team.objects.filter(id=risk.id).update(bytes=used + 10)
    size = sum(model.versions.values_list("size", flat=True))
    refused(
        f"churn's packages ({storage.human_bytes(size)}) would bring the team Risk's storage "
        f"to {storage.human_bytes(used + size)} of {storage.human_bytes(used + 10)}: delete "
        "old versions or models first"
    )
    Team.objects.filter(id=risk.id).update(bytes=None, active_models=1)
    refused("the team Risk has 1 of 1 active models: pause or delete one before deploying another")


# --- S3 failing -----------------------------------------------------------------------------


def test_s3_failing_mid_copy_leaves_the_model_whole_at_its_old_keys(
    worker, bucket, owner, staff, risk, validated
):
    """The second version's copy goes to a port nothing listens on: the first copy is
    removed, the rows and the old objects are as they were, and a retry then succeeds."""
    model = two_versions(owner, validated)
    sam = api_client_for(staff)
    before = state()
    closed = closed_port()
    copies = []

    def second_copy_to_a_closed_port(request, **_):
        copies.append(request.url)
        if "v2.dill" in request.url:
            request.url = request.url.replace(
                settings.S3_ENDPOINT_URL, f"http://127.0.0.1:{closed}"
            )

    events = storage.client().meta.events
    events.register_first("before-send.s3.CopyObject", second_copy_to_a_closed_port)
    try:
        response = sam.post(
            f"/api/v1/models/{model.id}/hand_over/",
            {"team": "risk", "reason": "alice left"},
            format="json",
        )
    finally:
        events.unregister("before-send.s3.CopyObject", second_copy_to_a_closed_port)

    assert any("v1.dill" in url for url in copies)  # the first copy was made
    assert response.status_code == 503
    detail = response.json()["detail"]
    assert detail.startswith("storage is unavailable (") and detail.endswith(
        "); nothing was moved, try again"
    ), detail
    assert state() == before
    assert set(before["objects"]) == {"alice/churn/v1.dill", "alice/churn/v2.dill"}

    response = sam.post(
        f"/api/v1/models/{model.id}/hand_over/", {"team": "risk", "reason": "alice left"}
    )
    assert response.status_code == 200, response.content
    assert set(objects()) == {"teams/risk/churn/v1.dill", "teams/risk/churn/v2.dill"}


def test_s3_failing_to_delete_the_old_keys_leaves_them_behind_and_the_model_handed_over(
    worker, bucket, owner, staff, risk, validated, caplog
):
    """Once the switch is committed the hand-over is done: old objects S3 would not delete
    stay behind (logged), never a version without its object."""
    model = two_versions(owner, validated)
    before = objects()
    sam = api_client_for(staff)
    closed = closed_port()

    def deletes_to_a_closed_port(request, **_):
        request.url = request.url.replace(settings.S3_ENDPOINT_URL, f"http://127.0.0.1:{closed}")

    events = storage.packages().connection.meta.client.meta.events
    events.register_first("before-send.s3.DeleteObjects", deletes_to_a_closed_port)
    try:
        response = sam.post(
            f"/api/v1/models/{model.id}/hand_over/", {"team": "risk", "reason": "alice left"}
        )
    finally:
        events.unregister("before-send.s3.DeleteObjects", deletes_to_a_closed_port)

    assert response.status_code == 200, response.content
    assert "objects left in the models bucket after a hand-over" in caplog.text
    after = objects()
    assert {key: after[key] for key in before} == before  # left behind, whole
    for version in model.versions.all():
        assert after[version.file.name] == (version.sha256, version.sha256)
        assert version.file.name.startswith("teams/risk/churn/")


def test_an_old_key_a_new_model_of_the_former_owner_took_is_not_deleted(
    worker, bucket, owner, staff, risk, validated
):
    """Alice uploads a new `churn` of her own just as hers is handed over: it takes the keys
    the hand-over is about to delete; those a row names are kept."""
    model = deploy(owner, packages.function_package(), "churn", validated)
    handover.hand_over(model, risk, "alice left", staff)
    again = packages.function_package(meta={"again": True})
    new = deploy(owner, again, "churn", validated)
    assert new.id != model.id and new.versions.get().file.name == "alice/churn/v1.dill"

    handover.discard_old(["alice/churn/v1.dill", "alice/churn/v2.dill"], owner)

    assert set(objects()) == {"alice/churn/v1.dill", "teams/risk/churn/v1.dill"}
    assert objects()["alice/churn/v1.dill"][0] == new.versions.get().sha256


def test_s3_down_refuses_the_hand_over_and_changes_nothing(
    worker, bucket, owner, staff, risk, validated, settings
):
    model = deploy(owner, packages.function_package(), "churn", validated)
    before = state()
    up, settings.S3_ENDPOINT_URL = settings.S3_ENDPOINT_URL, f"http://127.0.0.1:{closed_port()}"
    response = session(staff).post(
        f"/models/{model.id}/hand_over/", {"team": "risk", "reason": "alice left"}, follow=True
    )
    settings.S3_ENDPOINT_URL = up
    assert "storage is unavailable (" in response.content.decode()
    assert "nothing was moved, try again" in response.content.decode()
    assert state() == before


def test_the_page_asks_for_a_reason_and_changes_nothing_without_one(
    worker, bucket, owner, staff, risk, validated
):
    model = deploy(owner, packages.function_package(), "churn", validated)
    before = state()
    response = session(staff).post(
        f"/models/{model.id}/hand_over/", {"team": "risk", "reason": " "}, follow=True
    )
    assert "say why the model is handed over: the reason is kept in its history" in (
        response.content.decode()
    )
    assert state() == before


# --- people who leave -----------------------------------------------------------------------


def test_a_departed_persons_models_keep_scoring_and_staff_hand_them_over_from_their_list(
    worker, bucket, owner, outsider, staff, carol, risk, validated
):
    own = deploy(owner, packages.function_package(), "churn", validated)
    teams.set_role(risk, owner, "member")
    team_model = deploy(owner, packages.function_package(), "limits", validated, team="risk")
    stays = deploy(outsider, packages.function_package(), "spend", validated)  # mallory's
    owner.is_active = False
    owner.save()

    # Alice left: her own model and her team's keep scoring on their schedules.
    make_due(own, team_model)
    assert dispatch.tick() is not None
    finished = wait_for_runs([own.id, team_model.id])
    assert [r.status for r in finished] == ["succeeded", "succeeded"], [r.error for r in finished]

    assert session(carol).get("/departed/").status_code == 403
    assert 'href="/departed/"' in session(staff).get("/status/").content.decode()
    listed = session(staff).get("/departed/").content.decode()
    assert f'data-departed="{own.id}"' in listed
    assert f'data-departed="{team_model.id}"' not in listed
    assert f'data-departed="{stays.id}"' not in listed

    response = session(staff).post(
        f"/models/{own.id}/hand_over/",
        {"team": "risk", "reason": "alice left the bank", "next": "departed"},
    )

    assert response.status_code == 302 and response["Location"] == "/departed/"
    own.refresh_from_db()
    assert (own.owner, own.team, own.status) == (None, risk, "active")
    assert own.versions.get().file.name == "teams/risk/churn/v1.dill"
    assert f'data-departed="{own.id}"' not in session(staff).get("/departed/").content.decode()
    assert own.runs.get().status == "succeeded"  # its run stays, now the team's
    assert session(carol).get(f"/models/{own.id}/").status_code == 200
