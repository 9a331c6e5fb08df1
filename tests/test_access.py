"""Who reaches what: every URL pattern walked as another user, as a stranger and as staff or
not in the admin, and without a CSRF token. API tokens revoked and logins rate-limited:
tests/test_access_credentials.py.

The walks enumerate the URL patterns themselves (the portal's, the REST router's and the
admin's, in tests/routes.py), so a URL added later is checked too; one that takes an id
tests/routes.py does not know how to fill fails the walk until `OWNED_IDS` learns it.
"""

import csv
import time
from datetime import date
from types import SimpleNamespace

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.authtoken.models import Token

from scoring.models import (
    Batch,
    ChampionChange,
    Comparison,
    Deployment,
    PackageVersion,
    Report,
    ScoringRun,
)
from scoring.packages import storage, teams
from scoring.runs import dispatch, lifecycle
from tests.factories import cast, packages
from tests.factories.cast import api_client_for, session
from tests.flows import deploy, wait_for_runs
from tests.routes import (
    CHAMPION_CHANGES,
    MISSING,
    OWNED_IDS,
    admin_values,
    all_routes,
    answer,
    fillings,
    login_redirect,
    object_routes,
    path_of,
    portal_routes,
    send,
)

pytestmark = [pytest.mark.django_db(transaction=True)]

METHODS = ("get", "head", "post", "put", "patch", "delete")
UNSAFE = ("post", "put", "patch", "delete")
# Pages anyone may open: the login forms, logout, the OpenID Connect sign-in's way out to the
# provider and back (tests/test_oidc.py), and the API's schema and its docs.
PUBLIC = {"login", "logout", "schema", "api-docs", "admin:login", "admin:logout"} | {
    "oidc_authentication_init",
    "oidc_authentication_callback",
}


# --- the world: two users, each with a model scored in one batch ----------------------------


def bucket_keys(bucket: str) -> list[str]:
    pages = storage.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def state() -> dict:
    """Every row and stored object a request could change."""
    rows = {
        model.__name__: list(model.objects.order_by("pk").values())
        for model in (
            User,
            Token,
            Deployment,
            PackageVersion,
            Batch,
            ScoringRun,
            Report,
            ChampionChange,
            Comparison,
        )
    }
    rows["report runs"] = list(Report.runs.through.objects.order_by("pk").values())
    rows["packages"] = bucket_keys(settings.MODELS_BUCKET)
    rows["scores"] = bucket_keys(settings.SCORES_BUCKET)
    return rows


def wait_until_settled(timeout: float = 60) -> None:
    """The quality checks and the report emails finish just after the runs: wait for them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (
            not ScoringRun.objects.filter(quality__isnull=True).exists()
            and Report.objects.count() == 2
            and not Report.objects.filter(sent_at__isnull=True).exists()
        ):
            return
        time.sleep(0.3)
    raise AssertionError("the quality checks or the reports did not finish")


@pytest.fixture
def world(worker, bucket, owner, outsider, validated):
    """Alice's and Mallory's models, really deployed and scored in one batch: scores in S3,
    quality with a chart, a report each. Returns each one's ids."""
    alice_model = deploy(owner, packages.function_package(), "alice-churn-q3", validated)
    mallory_model = deploy(outsider, packages.function_package(), "mallory-spend", validated)
    dispatch.send_batch(
        [lifecycle.request_run(d, date.today()).id for d in (alice_model, mallory_model)]
    )
    finished = wait_for_runs([alice_model.id, mallory_model.id])
    assert [run.status for run in finished] == ["succeeded", "succeeded"], finished
    wait_until_settled()

    def ids(deployment):
        run = deployment.runs.get()
        champion = Deployment.objects.get(id=deployment.id).champion
        # A promotion waiting for approval: its approve URL names it.
        change = ChampionChange.objects.create(
            deployment=deployment,
            version=champion,
            kind=ChampionChange.Kind.PROMOTE,
            reason="better on new clients",
            requested_by=deployment.owner,
        )
        return SimpleNamespace(
            deployment=deployment.id,
            run=run.id,
            report=run.reports.get().id,
            version=champion.number,
            change=change.id,
            # A team of her own: its page and its managers' actions.
            team=teams.make_team(f"{deployment.owner.username}-team", deployment.owner).slug,
        )

    return SimpleNamespace(alice=ids(alice_model), mallory=ids(mallory_model))


MISSING_IDS = SimpleNamespace(
    deployment=MISSING,
    run=MISSING,
    report=MISSING,
    version=MISSING,
    change=MISSING,
    team=f"team-{MISSING}",
)


# --- another user's objects --------------------------------------------------------------


def test_every_url_of_alices_objects_is_a_404_to_mallory_for_every_method(world, owner, outsider):
    """Through the session and the API token alike, Mallory learns exactly what a missing id
    would tell her, for every method; nothing changes; and Alice opens every one of them."""
    clients = {"session": session(outsider), "token": api_client_for(outsider)}
    before = state()
    checked = []

    for route in object_routes():
        for values, missing in zip(
            fillings(route, world.alice), fillings(route, MISSING_IDS), strict=True
        ):
            path, missing_path = path_of(route, values), path_of(route, missing)
            for kind, client in clients.items():
                signed_in = kind == "session" or route.api
                allowed = []
                for method in METHODS:
                    response = send(client, method, path)
                    where = (kind, method.upper(), path)
                    assert answer(response) == answer(send(client, method, missing_path)), where
                    if not signed_in:  # a token does not open the web pages
                        assert login_redirect(response, path), where
                    elif response.status_code != 405:
                        assert response.status_code == 404, where
                        allowed.append(method)
                assert allowed or not signed_in, f"no method reaches {route} ({kind})"
                checked.append((route.label, kind, tuple(allowed)))

    assert state() == before
    labels = {label for label, _, _ in checked}
    assert labels == set(OWNED_IDS), labels  # every kind of object URL was walked

    alice = session(owner)
    for route in object_routes():
        for values in fillings(route, world.alice):
            path = path_of(route, values)
            if route.name == "model-action":
                if values["action"] == "pause":
                    assert alice.post(path).status_code == 302, path
            elif route.name == "model-online":
                assert alice.post(path, {"online": "on"}).status_code == 302, path
            elif route.name == "team-action":
                if values["action"] == "settings":
                    assert alice.post(path).status_code == 302, path
            elif route.name == "model-try":  # reached: her empty row is not JSON, nothing sent
                assert alice.post(path).status_code == 400, path
            elif route.name not in CHAMPION_CHANGES:
                response = alice.get(path)
                assert response.status_code == 200, (path, response.status_code)
                if path.endswith("scores.csv"):  # her scores, read back from S3
                    text = b"".join(response.streaming_content).decode()
                    rows = list(csv.reader(text.splitlines()))
                    assert (rows[0], len(rows)) == (["entity_id", "score"], 1 + 500)
    assert Deployment.objects.get(id=world.alice.deployment).status == Deployment.Status.PAUSED
    assert Deployment.objects.get(id=world.alice.deployment).online is True


def test_a_chart_of_my_report_with_another_users_run_is_a_404(world, outsider):
    mallory = session(outsider)
    own = f"/reports/{world.mallory.report}/chart-{world.mallory.run}.png"
    assert mallory.get(own).status_code == 200
    assert mallory.get(own)["Content-Type"] == "image/png"

    theirs = f"/reports/{world.mallory.report}/chart-{world.alice.run}.png"
    assert mallory.get(theirs).status_code == 404


def test_lists_and_pages_without_an_id_never_show_another_users_model(world, owner, outsider):
    alice = session(owner)
    assert "alice-churn-q3" in alice.get("/").content.decode()  # the name is there to find

    mallory = [session(outsider), api_client_for(outsider)]
    for route in portal_routes():
        if route.kwargs or route.label in PUBLIC:
            continue
        path = path_of(route, {})
        for client in mallory:
            response = client.get(path)
            assert response.status_code < 500, (path, response.status_code)
            body = b"".join(response.streaming_content) if response.streaming else response.content
            assert b"alice-churn-q3" not in body, path


# --- strangers and the admin ----------------------------------------------------------------


def test_every_url_sends_a_stranger_to_the_login_page_or_answers_401(world):
    stranger = Client()
    for route in portal_routes():
        if route.label in PUBLIC:
            continue
        for values in fillings(route, world.alice):
            path = path_of(route, values)
            for method in METHODS:
                response = send(stranger, method, path)
                if route.api:
                    assert response.status_code == 401, (method, path, response.status_code)
                    assert response["WWW-Authenticate"] == "Token", path
                else:
                    assert login_redirect(response, path), (method, path, response.status_code)


def test_the_admin_is_for_staff_only(world, owner):
    admin_routes = [route for route in all_routes() if route.admin]
    assert {"admin:scoring_deployment_change", "admin:authtoken_tokenproxy_delete"} <= {
        route.label for route in admin_routes
    }
    superuser = cast.make("superuser")
    not_staff = [Client(), session(owner), api_client_for(owner)]  # a token is not for the admin
    before = state()

    for route in admin_routes:
        if route.label in PUBLIC:
            continue
        path = path_of(route, admin_values(route, owner))
        for client in not_staff:
            for method in METHODS:
                response = send(client, method, path)
                assert login_redirect(response, path, "/admin/login/"), (method, path)
    assert state() == before

    root = session(superuser)
    for route in admin_routes:
        path = path_of(route, admin_values(route, owner))
        response = root.get(path)
        assert response.status_code < 500 and not login_redirect(response, path, "/admin/login/")


# --- CSRF --------------------------------------------------------------------------------


def test_every_unsafe_request_from_a_session_without_the_csrf_token_is_refused(world, owner):
    """Alice's own browser session, on her own objects: only the missing token stops it.

    The browser holds the CSRF cookie, as it does when another site makes it post: the cookie
    goes along, the token in the form or header cannot."""
    Token.objects.create(user=owner)
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(owner)
    assert browser.get("/").status_code == 200 and browser.cookies.get("csrftoken")
    before = state()

    for route in all_routes():
        values_list = [admin_values(route, owner)] if route.admin else fillings(route, world.alice)
        for values in values_list:
            path = path_of(route, values)
            for method in UNSAFE:
                response = send(browser, method, path)
                where = (method.upper(), path, response.status_code)
                assert response.status_code == 403, where
                # DRF says why in its data (its HTML renderer shows only "403 Forbidden").
                reason = getattr(response, "data", None) or response.content.decode()
                assert "CSRF" in str(reason), where

    assert state() == before
