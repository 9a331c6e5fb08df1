"""Who may do what with a team's model: every URL of the portal and every API route that
names a model, a run, a report or a team, walked by five visitors — an outsider, a viewer,
a member, a manager and staff — through the pages (session) and the API (token).

What each may do is not written here: it is `owners.table()`, the rules the views read
(the Help page shows the same table). The walk checks that the views do exactly that: a
refused request changes nothing, and what each visitor was let do, per action, is the table.
"""

import time
from datetime import date
from types import SimpleNamespace

import pytest
from django.contrib.auth.models import User

from portal import team_views
from scoring.models import ChampionChange, Deployment, Membership, Report, ScoringRun
from scoring.packages import owners, teams
from scoring.runs import dispatch, lifecycle
from tests.factories import packages
from tests.factories.cast import api_client_for, session
from tests.flows import deploy, wait_for_runs
from tests.routes import MISSING, fillings, object_routes, path_of, send

pytestmark = [pytest.mark.django_db(transaction=True)]

METHODS = ("get", "head", "post", "put", "patch", "delete")
DOWNLOADS = {"version-download", "api-model-version-download", "run-scores", "api-run-scores"}
# The unsafe requests, as owners.ACTIONS names them (model-action: its own action's name).
UNSAFE_ACTIONS = {
    ("model-online", "post"): "online",
    ("model-try", "post"): "predict",
    ("api-model-detail", "patch"): "settings",
    ("api-model-detail", "delete"): "delete",
    ("api-model-runs", "post"): "score",
    ("api-model-promote", "post"): "promote",
    ("api-model-rollback", "post"): "rollback",
    ("api-model-share", "post"): "share",
    ("api-model-approve", "post"): "approve",
    ("api-model-withdraw", "post"): "withdraw",
    ("api-model-hand-over", "post"): "hand_over",
    ("team-action", "post"): "manage team",
}


def action_of(route, method: str, values: dict) -> str | None:
    """The request's action, or None: a request no visitor may make (an unknown action)."""
    if method in ("get", "head"):
        return "download" if route.name in DOWNLOADS else "view"
    if route.name == "model-action":
        return values["action"] if values["action"] in owners.ACTIONS else None
    if route.name == "team-action" and values["action"] not in team_views.TEAM_ACTIONS:
        return None
    return UNSAFE_ACTIONS.get((route.name, method))


@pytest.fixture
def world(worker, bucket, owner, outsider, staff, validated):
    """The team retail: Carol its manager, Bob a member, Vera a viewer; Bob's model of the
    team, scored in a batch; a promotion Bob asked for, waiting; a service token."""
    carol = User.objects.create_user("carol", "carol@bank.example", "carol-password-123")
    bob = User.objects.create_user("bob", "bob@bank.example", "bob-password-123")
    vera = User.objects.create_user("vera", "vera@bank.example", "vera-password-123")
    retail = teams.make_team("retail", carol)
    retail.report_email = "retail-team@bank.example"
    retail.save()
    teams.set_role(retail, bob, "member")
    teams.set_role(retail, vera, "viewer")
    model = deploy(bob, packages.function_package(), "retail-churn", validated, team="retail")
    dispatch.send_batch([lifecycle.request_run(model, date.today()).id])
    assert [run.status for run in wait_for_runs([model.id])] == ["succeeded"]
    deadline = time.monotonic() + 60
    while not Report.objects.filter(runs__deployment=model, sent_at__isnull=False).exists():
        assert time.monotonic() < deadline, "the report was not sent"
        time.sleep(0.3)
    run = ScoringRun.objects.get(deployment=model)
    champion = Deployment.objects.get(id=model.id).champion
    change = ChampionChange.objects.create(
        deployment=model, version=champion, kind="promote", reason="better", requested_by=bob
    )
    ids = SimpleNamespace(
        deployment=model.id,
        run=run.id,
        report=run.reports.first().id,
        version=champion.number,
        change=change.id,
        team=retail.slug,
    )
    visitors = {"outsider": outsider, "viewer": vera, "member": bob, "manager": carol}
    return SimpleNamespace(ids=ids, visitors={**visitors, "staff": staff}, model=model)


def state() -> list:
    """What a refused request must leave as it was."""
    model = Deployment.objects.get(name="retail-churn")
    rows = [Deployment.objects.filter(id=model.id).values()[0]]
    rows += list(ChampionChange.objects.filter(deployment=model).values("status", "approved_by"))
    rows += list(model.versions.values("number", "file", "state"))
    rows += list(model.runs.values("id", "status", "attempts"))
    rows += list(Membership.objects.order_by("id").values("user", "role"))
    return rows


def request(client, method: str, path: str, ids):
    """As tests/routes.send, with the forms' version and change naming the world's: a form
    that names nothing would be a 404 of its own."""
    if method == "post" and not path.startswith("/api/"):
        return client.post(path, {"version": ids.version, "change": ids.change, "date": ""})
    return send(client, method, path)


def requests_of(world):
    """Every (route, values, method, action) of the walk, with the world's ids."""
    for route in object_routes():
        for values in fillings(route, world.ids):
            for method in METHODS:
                yield route, values, method, action_of(route, method, values)


def expected(visitor, role: str, action: str | None) -> bool:
    """Whether the rules let this visitor take the action on the team's model."""
    if action is None:
        return False
    if action == "manage team":
        return role in ("manager", "staff")
    if action == "approve":  # four eyes: Bob asked
        return owners.may_approve(visitor, Deployment.objects.get(name="retail-churn"), None)
    if action == "withdraw":
        return role == "member" or expected(visitor, role, "approve")
    return owners.reaches(
        owners.role_on(visitor, Deployment.objects.get(name="retail-churn")), action
    )


def test_five_visitors_reach_exactly_what_their_roles_allow(world):
    seen: dict[tuple[str, str], set[bool]] = {}
    before = state()
    # First what each visitor may not do: refused, and nothing changes.
    for role, visitor in world.visitors.items():
        clients = {"session": session(visitor), "token": api_client_for(visitor)}
        for route, values, method, action in requests_of(world):
            client = clients["token" if route.api else "session"]
            if expected(visitor, role, action):
                continue
            response = request(client, method, path_of(route, values), world.ids)
            where = (role, method.upper(), path_of(route, values))
            if response.status_code == 405:
                continue
            if role == "outsider" or action is None:
                assert response.status_code == 404, where
            elif action in ("approve", "withdraw"):  # the champion changes' own refusal
                assert response.status_code in (302, 409), where
            else:
                assert response.status_code == 403, where
            if action is not None and role != "outsider":
                seen.setdefault((role, action), set()).add(False)
    assert state() == before
    # Then what they may do (all but deleting the model, kept for the last): let through.
    for role, visitor in world.visitors.items():
        clients = {"session": session(visitor), "token": api_client_for(visitor)}
        for route, values, method, action in requests_of(world):
            if action == "delete" or not expected(visitor, role, action):
                continue
            client = clients["token" if route.api else "session"]
            response = request(client, method, path_of(route, values), world.ids)
            if response.status_code == 405:
                continue
            assert response.status_code not in (401, 403, 404), (role, method, route.name, values)
            seen.setdefault((role, action), set()).add(True)
    # What each role was let do is the rules' table, for every action the URLs offer.
    for row in owners.table():
        for role in ("viewer", "member", "manager"):
            if (role, row["action"]) in seen:
                assert seen[(role, row["action"])] == {row[role]}, (role, row)
    assert {action for _, action in seen} >= set(owners.ACTIONS) - {"deploy"}
    # A manager deletes the team's model; a member could not.
    path = f"/api/v1/models/{world.ids.deployment}/"
    assert api_client_for(world.visitors["member"]).delete(path).status_code == 403
    assert api_client_for(world.visitors["manager"]).delete(path).status_code == 204
    assert not Deployment.objects.filter(id=world.ids.deployment).exists()


def test_the_help_page_shows_the_rules_table(world):
    page = session(world.visitors["viewer"]).get("/help/").content.decode()
    for row in owners.table():
        cells = ["yes" if row[r] else "—" for r in ("viewer", "member", "manager")]
        assert (
            f'<tr data-action="{row["action"]}"><td>{row["action"]}</td><td>'
            + "</td><td>".join(cells)
            in page
        )


def test_a_team_and_its_urls_are_a_404_to_an_outsider_like_a_missing_one(world):
    mallory = session(world.visitors["outsider"])
    for suffix in ("", "member/", "token/"):
        mine = mallory.post(f"/teams/retail/{suffix}") if suffix else mallory.get("/teams/retail/")
        missing = (
            mallory.post(f"/teams/t{MISSING}/{suffix}")
            if suffix
            else mallory.get(f"/teams/t{MISSING}/")
        )
        assert mine.status_code == missing.status_code == 404
