"""Who reaches what: every URL pattern walked as another user, as a stranger and without a CSRF
token; API tokens revoked; logins rate-limited.

The walks enumerate the URL patterns themselves (the portal's, the REST router's and the
admin's), so a URL added later is checked too; one that takes an id this module does not know
how to fill fails the walk until `OWNED_IDS` learns it.
"""

import csv
import io
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from functools import cache
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.contrib.contenttypes.models import ContentType
from django.test import Client
from django.urls import URLResolver, get_resolver, resolve
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from scoring.models import Batch, Deployment, PackageVersion, Report, ScoringRun
from scoring.packages import storage
from scoring.runs import dispatch, lifecycle
from tests.factories import cast, packages
from tests.factories.cast import api_client_for
from tests.flows import deploy, wait_for_runs

pytestmark = [pytest.mark.django_db(transaction=True)]

METHODS = ("get", "head", "post", "put", "patch", "delete")
UNSAFE = ("post", "put", "patch", "delete")
# What an attacker would send to change a model if a view forgot to check its owner.
CHANGES = {"email": "mallory@telco.example", "schedule": "weekly", "status": "paused"}
# Pages anyone may open: the login forms, logout, and the API's schema and its docs.
PUBLIC = {"login", "logout", "schema", "api-docs", "admin:login", "admin:logout"}
ACTIONS = ("pause", "resume", "score", "delete", "settings", "no-such-action")
MISSING = 987_654_321  # an id no object has


# --- the URL patterns ----------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """One URL pattern with the prefixes of the includes above it, as a single regex."""

    regex: str
    route: str  # as Django writes it in a match: "models/<int:deployment_id>/"
    name: str | None
    namespace: str | None
    view: Callable

    @property
    def kwargs(self) -> set[str]:
        return set(re.compile(self.regex).groupindex)

    @property
    def label(self) -> str:
        return f"{self.namespace}:{self.name}" if self.namespace else str(self.name)

    @property
    def admin(self) -> bool:
        return self.namespace == "admin"

    @property
    def api(self) -> bool:
        return hasattr(self.view, "cls")  # a DRF view: it answers 401, not a login redirect

    def __str__(self) -> str:
        return f"{self.label} {self.regex!r}"


def all_routes(patterns=None, prefix=("", ""), namespace: str | None = None) -> list[Route]:
    found = []
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        regex = prefix[0] + pattern.pattern.regex.pattern.lstrip("^")
        route = prefix[1] + str(pattern.pattern).lstrip("^")  # as Django joins them
        if isinstance(pattern, URLResolver):
            found += all_routes(
                pattern.url_patterns, (regex, route), pattern.namespace or namespace
            )
        else:
            found.append(Route(regex, route, pattern.name, namespace, pattern.callback))
    return found


def group_end(regex: str, start: int) -> int:
    """The index just past the group that opens at `start`; groups may hold groups."""
    depth = 0
    for index in range(start, len(regex)):
        depth += {"(": 1, ")": -1}.get(regex[index], 0)
        if depth == 0:
            return index + 1
    raise ValueError(f"unbalanced group in {regex!r}")


def path_of(route: Route, values: dict) -> str:
    """The path that `route` matches with `values` in its groups (checked by resolving it)."""
    path, rest = "", route.regex
    while (start := rest.find("(?P<")) >= 0:
        name = rest[start + 4 : rest.index(">", start)]
        path += rest[:start] + str(values[name])
        rest = rest[group_end(rest, start) :]
    path = "/" + re.sub(r"\\Z|\$|\^", "", path + rest).replace("/?", "/").replace("\\", "")
    match = resolve(path)
    assert (match.route.lstrip("^"), match.func) == (route.route, route.view), f"{path}: {route}"
    return path


# What each URL that names an object is filled with, from ids of deployment, run and report.
OWNED_IDS: dict[str, Callable] = {
    "model": lambda o: [{"deployment_id": o.deployment}],
    "model-action": lambda o: [{"deployment_id": o.deployment, "action": a} for a in ACTIONS],
    "run-scores": lambda o: [{"run_id": o.run, "kind": kind} for kind in ("csv", "parquet")],
    "report": lambda o: [{"report_id": o.report}],
    "report-chart": lambda o: [{"report_id": o.report, "run_id": o.run}],
    "api-model-detail": lambda o: [{"pk": o.deployment}],
    "api-model-runs": lambda o: [{"pk": o.deployment}],
    "api-run-detail": lambda o: [{"pk": o.run}],
    "api-run-scores": lambda o: [{"pk": o.run}],
}


def admin_values(route: Route, alice: User) -> dict:
    """The admin asks for staff before it looks anything up; real ids let staff see real pages."""
    model_admin = getattr(route.view, "model_admin", None)
    first = model_admin and model_admin.model._default_manager.order_by("pk").first()
    deployment = Deployment.objects.filter(owner=alice).first()
    known = {
        "object_id": first.pk if first else MISSING,
        "id": alice.pk,
        "content_type_id": ContentType.objects.get_for_model(Deployment).pk,
        "app_label": "scoring",
        "url": "no-such-page/",
    }
    if route.name == "view_on_site":
        known["object_id"] = deployment.pk if deployment else MISSING
    unknown = route.kwargs - set(known)
    assert not unknown, f"{route} takes {unknown}: teach admin_values how to fill it"
    return {name: known[name] for name in route.kwargs}


def fillings(route: Route, ids) -> list[dict]:
    """Every way this module fills the route's groups with `ids`; fails for a route it cannot."""
    names = route.kwargs
    if not names:
        return [{}]
    if route.name not in OWNED_IDS:
        pytest.fail(f"{route} takes {sorted(names)}: teach OWNED_IDS in {__name__} to fill it")
    filled = OWNED_IDS[route.name](ids)
    for values in filled:
        assert set(values) == names, f"{route} takes {sorted(names)}, OWNED_IDS gives {values}"
    return filled


def portal_routes() -> list[Route]:
    return [route for route in all_routes() if not route.admin]


def object_routes() -> list[Route]:
    return [route for route in portal_routes() if route.kwargs]


# --- requests --------------------------------------------------------------------------


@cache
def package_bytes() -> bytes:
    return packages.dumps(packages.function_package())


def send(client, method: str, path: str):
    """One request as a browser form (POST) or an API client (PUT, PATCH, DELETE) sends it."""
    if method == "post":
        upload = io.BytesIO(package_bytes())
        upload.name = "theirs.dill"
        return client.post(path, {**CHANGES, "date": str(date.today()), "file": upload})
    if method in ("put", "patch", "delete"):
        body = json.dumps(CHANGES)
        return getattr(client, method)(path, body, content_type="application/json")
    return getattr(client, method)(path)


def answer(response) -> tuple:
    """What a client learns from a response (a redirect's target without its query)."""
    body = b"" if response.streaming else response.content
    return response.status_code, urlsplit(response.get("Location", "")).path, body


def login_redirect(response, path: str, login: str = "/login/") -> bool:
    target = urlsplit(response.get("Location", ""))
    return (
        response.status_code == 302
        and target.path == login
        and parse_qs(target.query).get("next") == [path]
    )


def session(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


# --- the world: two users, each with a model scored in one batch ----------------------------


def bucket_keys(bucket: str) -> list[str]:
    pages = storage.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def state() -> dict:
    """Every row and stored object a request could change."""
    rows = {
        model.__name__: list(model.objects.order_by("pk").values())
        for model in (User, Token, Deployment, PackageVersion, Batch, ScoringRun, Report)
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
        return SimpleNamespace(deployment=deployment.id, run=run.id, report=run.reports.get().id)

    return SimpleNamespace(alice=ids(alice_model), mallory=ids(mallory_model))


MISSING_IDS = SimpleNamespace(deployment=MISSING, run=MISSING, report=MISSING)


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
            else:
                response = alice.get(path)
                assert response.status_code == 200, (path, response.status_code)
                if path.endswith("scores.csv"):  # her scores, read back from S3
                    text = b"".join(response.streaming_content).decode()
                    rows = list(csv.reader(text.splitlines()))
                    assert (rows[0], len(rows)) == (["entity_id", "score"], 1 + 500)
    assert Deployment.objects.get(id=world.alice.deployment).status == Deployment.Status.PAUSED


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


# --- API tokens ------------------------------------------------------------------------


def api_with(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def test_i_can_revoke_my_token_without_making_a_new_one_and_it_stops_working_at_once(owner):
    alice = session(owner)
    key = alice.post("/token/", follow=True).context["token"].key
    api = api_with(key)
    assert api.get("/api/v1/models/").status_code == 200

    page = alice.get("/token/").content.decode()
    assert 'name="revoke"' in page and "Revoke this token" in page
    revoked = alice.post("/token/", {"revoke": "1"}, follow=True)

    assert revoked.redirect_chain == [("/token/", 302)]
    page = revoked.content.decode()
    assert "Your token was revoked: it no longer works." in page
    assert "You have no token yet." in page
    assert key not in page
    assert not Token.objects.filter(user=owner).exists()
    response = api.get("/api/v1/models/")
    assert response.status_code == 401
    assert response.json()["detail"] == "Invalid token."


def test_revoking_when_there_is_no_token_says_so_and_makes_none(owner):
    response = session(owner).post("/token/", {"revoke": "1"}, follow=True)

    assert "You have no token to revoke." in response.content.decode()
    assert not Token.objects.exists()


def test_staff_with_the_permission_revoke_any_users_token_in_the_admin(owner, staff):
    key = Token.objects.create(user=owner).key
    delete_url = f"/admin/authtoken/tokenproxy/{owner.pk}/delete/"  # DRF's admin keys by user
    sam = session(staff)
    assert sam.post(delete_url, {"post": "yes"}).status_code == 403  # staff, but no permission
    assert api_with(key).get("/api/v1/models/").status_code == 200

    staff.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="authtoken",
            codename__in=["view_tokenproxy", "delete_tokenproxy"],
        )
    )
    listing = sam.get("/admin/authtoken/tokenproxy/").content.decode()
    assert key in listing and "alice" in listing
    assert sam.post(delete_url, {"post": "yes"}).status_code == 302

    assert not Token.objects.filter(user=owner).exists()
    assert api_with(key).get("/api/v1/models/").status_code == 401


# --- login rate limit -----------------------------------------------------------------


def log_in(client, password: str, username: str = "alice", ip: str = "10.0.0.1"):
    return client.post("/login/", {"username": username, "password": password}, REMOTE_ADDR=ip)


def signed_in_as(client) -> str | None:
    return client.session.get("_auth_user_id")


LOCKED = "Too many failed logins; try again in 15 minutes."


def test_five_failed_logins_lock_the_username_out_even_with_the_right_password(client, owner):
    for attempt in range(1, 6):
        response = log_in(client, f"guess-{attempt}")
        assert signed_in_as(client) is None
    assert response.status_code == 429  # the fifth failure already answers with the lockout
    assert LOCKED in response.content.decode()

    sixth = log_in(client, "alice-password-123")

    assert sixth.status_code == 429
    page = sixth.content.decode()
    assert LOCKED in page
    assert 'name="password"' in page  # the login page itself, not a bare error
    assert signed_in_as(client) is None
    assert client.get("/").status_code == 302


def test_four_failures_still_let_the_right_password_in(client, owner):
    for attempt in range(4):
        response = log_in(client, f"guess-{attempt}")
        assert "Your username and password didn't match" in response.content.decode()

    assert log_in(client, "alice-password-123").status_code == 302
    assert signed_in_as(client) == str(owner.pk)


def test_a_lockout_holds_one_username_from_one_address_only(client, owner, outsider):
    for attempt in range(5):
        log_in(client, f"guess-{attempt}")

    mallory = Client()
    assert log_in(mallory, "mallory-password-123", username="mallory").status_code == 302
    assert signed_in_as(mallory) == str(outsider.pk)
    elsewhere = Client()
    assert log_in(elsewhere, "alice-password-123", ip="10.0.0.2").status_code == 302
    assert signed_in_as(elsewhere) == str(owner.pk)


def test_behind_a_proxy_a_lockout_holds_the_client_the_proxy_saw(client, owner, settings):
    settings.TRUSTED_PROXIES = 1
    proxy = "172.18.0.5"
    for attempt in range(5):
        # The client's own X-Forwarded-For entry (a made-up address) is not trusted.
        client.post(
            "/login/",
            {"username": "alice", "password": f"guess-{attempt}"},
            REMOTE_ADDR=proxy,
            HTTP_X_FORWARDED_FOR=f"10.9.9.{attempt}, 203.0.113.7",
        )

    def through_the_proxy(client, client_address):
        return client.post(
            "/login/",
            {"username": "alice", "password": "alice-password-123"},
            REMOTE_ADDR=proxy,
            HTTP_X_FORWARDED_FOR=client_address,
        )

    assert through_the_proxy(Client(), "203.0.113.7").status_code == 429
    elsewhere = Client()
    assert through_the_proxy(elsewhere, "198.51.100.20").status_code == 302
    assert signed_in_as(elsewhere) == str(owner.pk)


def test_the_api_token_keeps_working_while_the_login_is_locked(client, owner):
    api = api_client_for(owner)
    for attempt in range(6):
        log_in(client, f"guess-{attempt}")

    assert api.get("/api/v1/models/").status_code == 200


def test_the_login_works_again_after_the_cool_off(client, owner):
    for attempt in range(6):
        log_in(client, f"guess-{attempt}")
    assert log_in(client, "alice-password-123").status_code == 429

    # The cool-off counts from the last failure: move that 14 minutes back, then 16.
    last = AccessAttempt.objects.get(username="alice").attempt_time
    AccessAttempt.objects.update(attempt_time=last - timedelta(minutes=14))
    assert log_in(client, "alice-password-123").status_code == 429
    last = AccessAttempt.objects.get(username="alice").attempt_time
    AccessAttempt.objects.update(attempt_time=last - timedelta(minutes=16))

    assert log_in(client, "alice-password-123").status_code == 302
    assert signed_in_as(client) == str(owner.pk)
