"""The URL patterns the access tests walk (tests/test_access.py): every pattern of the portal,
the REST router and the admin as a regex, filled with the ids of real objects, and the
requests each kind of client sends them.

A URL that takes an id this module does not know how to fill fails the walk until
`OWNED_IDS` learns it.
"""

import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from functools import cache
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth.models import User
from django.contrib.contenttypes.models import ContentType
from django.urls import URLResolver, get_resolver, resolve

from scoring.models import Deployment
from tests.factories import packages

# What an attacker would send to change a model if a view forgot to check its owner.
CHANGES = {"email": "mallory@telco.example", "schedule": "weekly", "status": "paused"}
ACTIONS = (
    "pause",
    "resume",
    "score",
    "delete",
    "settings",
    "promote",
    "rollback",
    "share",
    "approve",
    "withdraw",
    "hand_over",
    "no-such-action",
)
TEAM_ACTIONS = ("member", "remove", "token", "revoke", "settings", "no-such-action")
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
    "api-model-history": lambda o: [{"pk": o.deployment}],
    "api-model-version-download": lambda o: [{"pk": o.deployment, "number": 1}],
    "version-download": lambda o: [{"deployment_id": o.deployment, "number": 1}],
    "api-run-detail": lambda o: [{"pk": o.run}],
    "api-run-scores": lambda o: [{"pk": o.run}],
    "api-model-comparisons": lambda o: [{"pk": o.deployment}],
    "api-model-changes": lambda o: [{"pk": o.deployment}],
    "api-model-promote": lambda o: [{"pk": o.deployment, "number": o.version}],
    "api-model-rollback": lambda o: [{"pk": o.deployment, "number": o.version}],
    "api-model-approve": lambda o: [{"pk": o.deployment, "change_id": o.change}],
    "api-model-withdraw": lambda o: [{"pk": o.deployment, "change_id": o.change}],
    "api-model-share": lambda o: [{"pk": o.deployment}],
    "model-online": lambda o: [{"deployment_id": o.deployment}],
    "model-try": lambda o: [{"deployment_id": o.deployment}],
    "team": lambda o: [{"slug": o.team}],
    "team-action": lambda o: [{"slug": o.team, "action": a} for a in TEAM_ACTIONS],
    "api-model-hand-over": lambda o: [{"pk": o.deployment}],
}
# Requests that change a model's champion, its challenger's share or its owner: only POST
# reaches them (their owner's own use is tested in tests/test_champion_changes.py and
# tests/test_handover.py).
CHAMPION_CHANGES = {
    "api-model-hand-over",
    "api-model-promote",
    "api-model-rollback",
    "api-model-approve",
    "api-model-withdraw",
    "api-model-share",
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
