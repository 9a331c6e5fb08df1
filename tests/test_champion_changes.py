"""Promote a challenger, roll back to an earlier version, and the four-eyes approval: the
runs made next score the version the record says, and the record says who, why and when."""

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from scoring.models import ChampionChange, PackageVersion, Role, ScoringRun
from scoring.packages import roles
from scoring.runs import dispatch, lifecycle
from tests.factories.cast import api_client_for, session
from tests.factories.runs import make_models

pytestmark = pytest.mark.django_db


@pytest.fixture
def model(owner):
    """alice's model: v1 the champion, v2 a valid challenger beside it."""
    (deployment,) = make_models(owner, 1, prefix="churn")
    drop_challenger(deployment, 2)
    return deployment


def drop_challenger(deployment, number: int, share: float | None = None) -> PackageVersion:
    """A valid version `number` dropped as the challenger (at a share of the entities)."""
    version = PackageVersion.objects.create(
        deployment=deployment,
        number=number,
        file=f"{deployment.owner.username}/{deployment.slug}/v{number}.dill",
        filename=f"churn-v{number}.dill",
        size=20_000,
        sha256=str(number) * 64,
        state=PackageVersion.State.VALID,
        package=deployment.champion.package,
        dropped_as=Role.CHALLENGER,
        dropped_share=share,
    )
    roles.take_role(version, deployment)
    return version


@pytest.fixture
def approvers(staff, superuser):
    """sam and root are staff of the approvers' group."""
    group = Group.objects.create(name="approvers")
    group.user_set.add(staff, superuser)
    return group


def next_runs(deployment, day_offset: int) -> dict[str, int]:
    """The runs the schedule makes when the model is next due: {role: version number}."""
    due = timezone.now().replace(hour=6, minute=0) + timedelta(days=day_offset)
    deployment.__class__.objects.filter(id=deployment.id).update(next_run_at=due)
    ids = dispatch.due_schedules(due + timedelta(minutes=1))
    runs = ScoringRun.objects.filter(id__in=ids).select_related("version")
    return {run.role: run.version.number for run in runs}


def next_splits(deployment, day_offset: int) -> dict[str, float | None]:
    """The split the runs made when the model is next due were made with: {role: share}."""
    made = list(ScoringRun.objects.filter(deployment=deployment).values_list("id", flat=True))
    next_runs(deployment, day_offset)
    runs = ScoringRun.objects.filter(deployment=deployment).exclude(id__in=made)
    return {run.role: run.split_share for run in runs}


def test_promote_then_roll_back_the_next_runs_score_what_the_record_says(model, api, owner):
    assert next_runs(model, 1) == {"champion": 1, "challenger": 2}

    promoted = api.post(
        f"/api/v1/models/{model.id}/versions/2/promote/", {"reason": "Gini +4 pts on OOT"}
    )
    assert promoted.status_code == 200, promoted.json()
    assert promoted.json()["status"] == "done"
    assert next_runs(model, 2) == {"champion": 2}  # promoted: no challenger until a new one

    rolled = api.post(
        f"/api/v1/models/{model.id}/versions/1/rollback/", {"reason": "v2 misranks new clients"}
    )
    assert rolled.status_code == 200, rolled.json()
    assert next_runs(model, 3) == {"champion": 1}

    record = api.get(f"/api/v1/models/{model.id}/changes/").json()
    assert [
        (c["kind"], c["version"], c["replaced_version"], c["reason"], c["requested_by"])
        for c in record
    ] == [
        ("rollback", 1, 2, "v2 misranks new clients", "alice"),
        ("promote", 2, 1, "Gini +4 pts on OOT", "alice"),
    ]
    assert all(c["status"] == "done" and c["approved_by"] is None for c in record)
    shown = api.get(f"/api/v1/models/{model.id}/").json()
    assert (shown["current_version"], shown["challenger_version"]) == (1, None)
    # The model's record of changes holds both, with who, from where and why.
    history = api.get(f"/api/v1/models/{model.id}/history/").json()["results"]
    champion_set = [
        (entry["actor"], entry["via"], entry["reason"])
        for entry in history
        if entry["reason"] and any(change["field"] == "champion" for change in entry["changes"])
    ]
    assert champion_set == [
        ("alice", "api", "v2 misranks new clients"),
        ("alice", "api", "Gini +4 pts on OOT"),
    ]


def test_a_change_needs_a_reason_and_a_sensible_target(model, api):
    refusals = {
        "versions/2/promote/": ({"reason": "  "}, "reason"),
        "versions/1/promote/": ({"reason": "try"}, "the champion already"),
        "versions/2/rollback/": ({"reason": "try"}, "is the challenger: promote it instead"),
        "versions/9/rollback/": ({"reason": "try"}, "has no version 9"),
    }
    for path, (body, message) in refusals.items():
        response = api.post(f"/api/v1/models/{model.id}/{path}", body)
        assert response.status_code in (400, 404, 409), path
        assert message in str(response.json()), (path, response.json())

    model.refresh_from_db()
    assert (model.champion.number, model.challenger.number) == (1, 2)
    assert not ChampionChange.objects.exists()


def test_with_approval_required_a_promotion_waits_for_another_approver(
    model, settings, approvers, staff, superuser, owner
):
    settings.REQUIRE_APPROVAL = True
    sam, root, alice = api_client_for(staff), api_client_for(superuser), api_client_for(owner)

    asked = sam.post(f"/api/v1/models/{model.id}/versions/2/promote/", {"reason": "better KS"})

    assert asked.status_code == 200, asked.json()
    assert (asked.json()["status"], asked.json()["waiting_for"]) == ("waiting", ["root"])
    assert next_runs(model, 1)["champion"] == 1  # nothing changes while it waits
    page = session(owner).get(f"/models/{model.id}/").content.decode()
    assert "waiting for approval by root" in page
    change = asked.json()["id"]
    approve = f"/api/v1/models/{model.id}/changes/{change}/approve/"
    by_requester = sam.post(approve)
    assert by_requester.status_code == 409
    assert "someone other than the one who asked" in by_requester.json()["detail"]
    by_owner = alice.post(approve)
    assert by_owner.status_code == 409 and "approvers" in by_owner.json()["detail"]
    assert ChampionChange.objects.get(id=change).status == "waiting"

    approved = root.post(approve)

    assert approved.status_code == 200, approved.json()
    assert (approved.json()["status"], approved.json()["approved_by"]) == ("done", "root")
    assert next_runs(model, 2) == {"champion": 2}


def test_the_model_page_promotes_with_a_reason_and_shows_the_record(model, owner):
    browser = session(owner)

    browser.post(f"/models/{model.id}/promote/", {"version": 2, "reason": "stable for 3 weeks"})

    page = browser.get(f"/models/{model.id}/").content.decode()
    assert 'id="champion">v2' in page
    assert "promote to v2" in page and "stable for 3 weeks" in page
    assert 'id="rollback-form"' in page and '<option value="1">v1</option>' in page


def test_a_waiting_change_is_withdrawn_by_the_one_who_asked_and_then_another_may_be_asked(
    model, settings, approvers, owner, outsider
):
    settings.REQUIRE_APPROVAL = True
    alice = api_client_for(owner)
    asked = alice.post(f"/api/v1/models/{model.id}/versions/2/promote/", {"reason": "try it"})
    second = alice.post(f"/api/v1/models/{model.id}/versions/2/promote/", {"reason": "again"})
    assert second.status_code == 409 and "waiting for approval" in second.json()["detail"]
    withdraw = f"/api/v1/models/{model.id}/changes/{asked.json()['id']}/withdraw/"

    withdrawn = alice.post(withdraw)

    assert withdrawn.status_code == 200, withdrawn.json()
    assert (withdrawn.json()["status"], withdrawn.json()["withdrawn_by"]) == ("withdrawn", "alice")
    assert alice.post(withdraw).status_code == 409  # once
    model.refresh_from_db()
    assert model.champion.number == 1
    again = alice.post(f"/api/v1/models/{model.id}/versions/2/promote/", {"reason": "again"})
    assert (again.status_code, again.json()["status"]) == (200, "waiting")


def test_a_version_a_rollback_left_behind_can_be_made_champion_again(model, api):
    for path, reason in (("2/promote", "better on OOT"), ("1/rollback", "v2 misranks")):
        response = api.post(f"/api/v1/models/{model.id}/versions/{path}/", {"reason": reason})
        assert response.status_code == 200, response.json()

    again = api.post(
        f"/api/v1/models/{model.id}/versions/2/rollback/", {"reason": "the bug was upstream"}
    )
    assert again.status_code == 200, again.json()
    assert (again.json()["kind"], again.json()["replaced_version"]) == ("rollback", 1)
    assert next_runs(model, 1) == {"champion": 2}


def test_score_now_scores_the_challenger_on_a_day_the_champion_already_scored(model):
    day = timezone.now().date() - timedelta(days=3)
    ScoringRun.objects.create(
        deployment=model,
        version=model.champion,
        date=day,
        trigger=ScoringRun.Trigger.SCHEDULE,
        status=ScoringRun.Status.SUCCEEDED,
    )

    run = dispatch.score_now(model, day)
    assert (run.role, run.version.number, run.status) == ("challenger", 2, "queued")

    ScoringRun.objects.filter(id=run.id).update(status=ScoringRun.Status.SUCCEEDED)
    with pytest.raises(lifecycle.RunError, match="version 1 already scored"):
        dispatch.score_now(model, day)  # both scored: the champion's refusal is said


def test_a_day_keeps_the_split_of_its_first_run_so_no_entity_is_scored_live_twice(model):
    """The champion scored every entity of a day, then the challenger got a 30 % share: that
    day's challenger scores as a shadow (every entity, beside the live rows); the next day
    splits. A new champion re-scoring a split day keeps to the champion's side."""
    day = timezone.now().date() - timedelta(days=3)
    champion_run = dispatch.score_now(model, day)
    assert champion_run.split_share is None
    ScoringRun.objects.filter(deployment=model).update(status=ScoringRun.Status.SUCCEEDED)
    model.__class__.objects.filter(id=model.id).update(challenger_share=0.3)
    model.refresh_from_db()

    with pytest.raises(lifecycle.RunError, match="already scored"):
        dispatch.score_now(model, day)
    assert next_runs(model, 1) == {"champion": 1, "challenger": 2}
    next_day = ScoringRun.objects.filter(deployment=model).exclude(date=day)
    assert {run.split_share for run in next_day} == {0.3}

    v3 = drop_challenger(model, 3, share=0.5)  # split 50/50, dropped after the day scored
    run = dispatch.score_now(model, day)
    assert (run.version.number, run.role, run.split_share) == (3, "challenger", None)
    roles.request_change(model, v3, "promoted after a week of shadow scoring", model.owner)
    model.refresh_from_db()
    assert (model.champion.number, roles.split_share(model)) == (3, None)
    # The next day was split 70/30 with v2: v3 re-scores it on the champion's side.
    rescored = lifecycle.request_run(model, next_day.first().date, role=Role.CHAMPION)
    assert (rescored.version.number, rescored.split_share) == (3, 0.3)


def test_the_model_page_and_the_api_say_which_side_and_table_each_run_scored(model, owner, api):
    day = timezone.now().date() - timedelta(days=2)
    dispatch.score_now(model, day)  # the challenger as a shadow
    model.__class__.objects.filter(id=model.id).update(challenger_share=0.3)
    model.refresh_from_db()
    dispatch.score_now(model, day + timedelta(days=1))  # split 70/30

    page = session(owner).get(f"/models/{model.id}/").content.decode()

    sides = dict(re.findall(r'data-side="(\d+)">([^<]+)<', page))
    runs = {(r.date, r.role): str(r.id) for r in ScoringRun.objects.filter(deployment=model)}
    assert runs[(day, "champion")] not in sides  # every entity, live: nothing to say
    assert sides[runs[(day, "challenger")]] == "shadow"
    assert sides[runs[(day + timedelta(days=1), "champion")]] == "70% of entities"
    assert sides[runs[(day + timedelta(days=1), "challenger")]] == "30% of entities"
    tables = {run: api.get(f"/api/v1/runs/{run}/").json()["scores_table"] for run in runs.values()}
    assert tables == {
        runs[(day, "champion")]: "scores",
        runs[(day, "challenger")]: "scores_shadow",
        runs[(day + timedelta(days=1), "champion")]: "scores",
        runs[(day + timedelta(days=1), "challenger")]: "scores",
    }


def share_changes(api, deployment) -> list[tuple]:
    """The record's changes of the challenger's share: (who, from where, why, before, after)."""
    history = api.get(f"/api/v1/models/{deployment.id}/history/").json()["results"]
    return [
        (entry["actor"], entry["via"], entry["reason"], change["before"], change["after"])
        for entry in history
        for change in entry["changes"]
        if change["field"] == "challenger_share"
    ]


def test_the_challengers_share_changes_with_a_reason_from_the_next_run_on(model, api):
    assert next_splits(model, 1) == {"champion": None, "challenger": None}  # a shadow

    split = api.post(
        f"/api/v1/models/{model.id}/share/",
        {"share": 0.3, "reason": "serve 30 % with v2"},
        format="json",
    )

    assert split.status_code == 200, split.json()
    assert split.json()["challenger_share"] == 0.3
    assert next_splits(model, 2) == {"champion": 0.3, "challenger": 0.3}
    made = ScoringRun.objects.filter(deployment=model).order_by("date")
    assert [run.split_share for run in made] == [None, None, 0.3, 0.3]  # made runs keep theirs

    shadow = api.post(
        f"/api/v1/models/{model.id}/share/",
        {"share": None, "reason": "v2 misranks: back to shadow"},
        format="json",
    )

    assert shadow.status_code == 200, shadow.json()
    assert shadow.json()["challenger_share"] is None
    assert next_splits(model, 3) == {"champion": None, "challenger": None}
    assert share_changes(api, model) == [
        ("alice", "api", "v2 misranks: back to shadow", "0.3", None),
        ("alice", "api", "serve 30 % with v2", None, "0.3"),
    ]


@pytest.mark.parametrize(
    "body, message",
    [
        ({"share": 0.3}, "reason: This field is required"),
        ({"share": 0.3, "reason": "  "}, "reason: This field may not be blank"),
        ({"reason": "try"}, "share: This field is required"),
        ({"share": 0, "reason": "try"}, "share must be a number above 0 and at most 1, got '0'"),
        ({"share": "1.5", "reason": "try"}, "share must be a number above 0 and at most 1"),
        ({"share": "ten", "reason": "try"}, "share must be a number above 0 and at most 1"),
        ({"share": None, "reason": "try"}, "the challenger is a shadow (no share) already"),
    ],
)
def test_a_bad_change_of_the_share_says_why_and_changes_nothing(model, api, body, message):
    response = api.post(f"/api/v1/models/{model.id}/share/", body, format="json")

    assert response.status_code in (400, 409), response.json()
    assert message in response.json()["detail"]
    model.refresh_from_db()
    assert model.challenger_share is None
    assert share_changes(api, model) == []


def test_a_model_without_a_challenger_has_no_share_to_change(model, api):
    promoted = api.post(f"/api/v1/models/{model.id}/versions/2/promote/", {"reason": "better"})
    assert promoted.status_code == 200, promoted.json()

    response = api.post(
        f"/api/v1/models/{model.id}/share/", {"share": 0.5, "reason": "try"}, format="json"
    )

    assert response.status_code == 409
    assert response.json()["detail"] == (
        "churn-000 has no challenger: a share splits the entities between champion and challenger"
    )
    model.refresh_from_db()
    assert model.challenger_share is None


def test_the_model_page_shows_the_split_and_changes_it_with_a_reason(model, owner, api):
    browser = session(owner)
    page = browser.get(f"/models/{model.id}/").content.decode()
    assert '<dd id="challenger-share">shadow: scores every entity beside the champion</dd>' in page

    answer = browser.post(
        f"/models/{model.id}/share/", {"share": "0.25", "reason": "a quarter on v2"}, follow=True
    )

    page = answer.content.decode()
    assert "From the next run on v2 scores 0.25 of the entities, the champion the rest." in page
    assert '<dd id="challenger-share">share 0.25: the challenger scores that share' in page
    assert 'name="share" type="number" min="0" max="1" step="any" value="0.25"' in page
    assert share_changes(api, model) == [("alice", "web", "a quarter on v2", None, "0.25")]

    refused = browser.post(f"/models/{model.id}/share/", {"share": "2", "reason": "x"}, follow=True)
    assert "share must be a number above 0 and at most 1, got &#x27;2&#x27;" in (
        refused.content.decode()
    )
    model.refresh_from_db()
    assert model.challenger_share == 0.25
