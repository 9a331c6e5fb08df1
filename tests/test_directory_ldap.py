"""Sign-in through LDAP / Active Directory (portal.directory), against a real OpenLDAP slapd
that each test starts on loopback with a directory of its own (tests/factories/slapd.py).

The portal is set up as an operator would set it, from the LDAP_* variables, and people
sign in through the real login page: their teams and roles follow their directory groups
at each sign-in, and a directory that goes down is said so while sessions and local
accounts keep working.
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import ldap
import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured
from django.test import Client
from django_auth_ldap.config import NestedActiveDirectoryGroupType

from portal import directory
from portal.settings import directory_groups, ldap_settings
from scoring.models import Deployment, Membership, Team
from tests.factories import cast, slapd

ROOT = Path(__file__).resolve().parent.parent
USUAL = "Your username and password didn't match. Please try again."
RITA_PASSWORD = "rita-password-123"


@pytest.fixture
def ldap_server(tmp_path):
    """Rita manages the retail team's models in the directory: she is in ds-retail and in
    ds-retail-managers (and in ds-canteen, which DIRECTORY_GROUPS does not name). Tom is in
    both retail groups too: a groupOfNames keeps a member."""
    server = slapd.Slapd(
        tmp_path / "slapd",
        [
            slapd.person("rita", "Rita", "Rossi", RITA_PASSWORD),
            slapd.person("tom", "Tom", "Berg", "tom-password-123"),
            slapd.group("ds-retail-managers", "rita", "tom"),
            slapd.group("ds-retail", "rita", "tom"),
            slapd.group("ds-canteen", "rita"),
        ],
    )
    yield server
    server.stop()


def point_at(uri: str, settings, monkeypatch) -> None:
    """The portal's settings from the variables an operator would set (deploy/.env.example)."""
    variables = {
        "LDAP_SERVER_URI": uri,
        "LDAP_BIND_DN": slapd.SERVICE_DN,
        "LDAP_BIND_PASSWORD": slapd.SERVICE_PASSWORD,
        "LDAP_USER_SEARCH_BASE": slapd.PEOPLE,
        "LDAP_GROUP_SEARCH_BASE": slapd.GROUPS,
        "LDAP_GROUP_TYPE": "groupOfNames",
        "LDAP_TIMEOUT_SECONDS": "2",
    }
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    for name, value in ldap_settings().items():
        setattr(settings, name, value)
    settings.AUTHENTICATION_BACKENDS = [
        "axes.backends.AxesStandaloneBackend",
        "django_auth_ldap.backend.LDAPBackend",
        "django.contrib.auth.backends.ModelBackend",
    ]
    settings.DIRECTORY_GROUPS = directory_groups(
        "ds-retail-managers=retail:manager,ds-retail=retail:member"
    )


@pytest.fixture
def ldap_on(ldap_server, settings, monkeypatch, db):
    point_at(ldap_server.uri, settings, monkeypatch)
    return ldap_server


@pytest.fixture
def retail_model(db) -> Deployment:
    team = Team.objects.create(name="Retail", slug="retail")
    return Deployment.objects.create(team=team, name="retail-churn", slug="retail-churn")


def sign_in(client: Client, username: str, password: str):
    return client.post("/login/", {"username": username, "password": password})


def signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def role_of(username: str) -> str | None:
    membership = Membership.objects.filter(user__username=username, team__slug="retail").first()
    return membership and membership.role


def test_a_directory_group_makes_its_people_managers_of_a_team_at_sign_in(ldap_on, retail_model):
    client = Client()

    response = sign_in(client, "rita", RITA_PASSWORD)

    assert response.status_code == 302 and response.url == "/"
    rita = User.objects.get(username="rita")
    assert (rita.first_name, rita.last_name, rita.email) == ("Rita", "Rossi", "rita@bank.example")
    assert not rita.has_usable_password()  # the directory checks it, never the portal
    membership = Membership.objects.get(user=rita)
    assert (membership.team, membership.role, membership.from_directory) == (
        retail_model.team,
        "manager",
        True,
    )
    page = client.get("/")
    assert page.status_code == 200
    assert 'data-model="retail-churn"' in page.content.decode()


def test_leaving_the_managers_group_demotes_at_the_next_sign_in(ldap_on, retail_model):
    client = Client()
    sign_in(client, "rita", RITA_PASSWORD)
    assert role_of("rita") == "manager"

    ldap_on.remove_member("ds-retail-managers", "rita")
    assert role_of("rita") == "manager"  # the session goes on; the next sign-in reads it
    client.post("/logout/")
    assert sign_in(client, "rita", RITA_PASSWORD).status_code == 302

    assert role_of("rita") == "member"
    assert 'data-model="retail-churn"' in client.get("/").content.decode()
    delete = client.post(f"/models/{retail_model.id}/delete/")
    assert delete.status_code == 403  # a manager's action
    assert Deployment.objects.filter(id=retail_model.id).exists()

    ldap_on.remove_member("ds-retail", "rita")
    client.post("/logout/")
    assert sign_in(client, "rita", RITA_PASSWORD).status_code == 302

    assert role_of("rita") is None
    assert 'data-model="retail-churn"' not in client.get("/").content.decode()
    assert client.get(f"/models/{retail_model.id}/").status_code == 404


def test_a_team_given_in_the_portal_stays_when_no_group_gives_it(ldap_on, retail_model):
    """Only the memberships the directory gave are the directory's to take away."""
    canteen = Team.objects.create(name="Canteen", slug="canteen")
    sign_in(Client(), "rita", RITA_PASSWORD)
    rita = User.objects.get(username="rita")
    Membership.objects.create(team=canteen, user=rita, role="viewer")

    assert sign_in(Client(), "rita", RITA_PASSWORD).status_code == 302

    assert set(Membership.objects.filter(user=rita).values_list("team__slug", "role")) == {
        ("retail", "manager"),
        ("canteen", "viewer"),
    }


@pytest.mark.parametrize(
    ("username", "password"),
    [("rita", "not-her-password"), ("nobody", "any-password-123")],
    ids=["wrong password", "unknown user"],
)
def test_a_wrong_password_or_an_unknown_user_is_refused_with_the_usual_message(
    ldap_on, username, password
):
    client = Client()

    response = sign_in(client, username, password)

    assert response.status_code == 200
    page = response.content.decode()
    assert USUAL in page
    assert "directory-down" not in page
    assert not signed_in(client)
    assert not User.objects.filter(username=username).exists()


def test_five_wrong_passwords_lock_a_directory_person_out_as_a_local_one(ldap_on, settings):
    """Axes' backend comes before the directory's: a locked-out name is not tried there."""
    settings.AXES_FAILURE_LIMIT = 5
    client = Client()
    for _ in range(5):
        sign_in(client, "rita", "guessing-123")

    response = sign_in(client, "rita", RITA_PASSWORD)

    assert "Too many failed logins; try again in 15 minutes." in response.content.decode()
    assert not signed_in(client)


def test_with_the_directory_down_sign_in_says_so_and_sessions_and_local_staff_go_on(
    ldap_on, retail_model, staff
):
    rita = Client()
    assert sign_in(rita, "rita", RITA_PASSWORD).status_code == 302

    ldap_on.stop()

    page = rita.get("/")
    assert page.status_code == 200
    assert 'data-model="retail-churn"' in page.content.decode()
    assert rita.get(f"/models/{retail_model.id}/").status_code == 200

    again = Client()
    response = sign_in(again, "rita", RITA_PASSWORD)
    assert response.status_code == 200
    page = response.content.decode()
    assert directory.UNREACHABLE in page
    assert USUAL not in page and "Traceback" not in page
    assert not signed_in(again)
    assert role_of("rita") == "manager"  # nothing read, nothing taken away

    sam = Client()
    username, _, password = cast.CAST["staff"]
    assert sign_in(sam, username, password).status_code == 302
    assert sam.get("/status/").status_code == 200


def test_a_directory_that_never_answers_fails_the_sign_in_after_its_timeout(
    settings, monkeypatch, db
):
    """A server that takes the connection and then says nothing (a hung directory, a
    firewall that drops): the login page answers after LDAP_TIMEOUT_SECONDS, not never."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshakes; nobody reads a byte
        point_at(f"ldap://127.0.0.1:{silent.getsockname()[1]}", settings, monkeypatch)
        client = Client()

        started = time.monotonic()
        response = sign_in(client, "rita", RITA_PASSWORD)
        took = time.monotonic() - started

    assert response.status_code == 200
    assert directory.UNREACHABLE in response.content.decode()
    assert took < 10, f"the sign-in took {took:.1f} s"


def test_active_directory_is_a_matter_of_settings(monkeypatch):
    """The AD example of deploy/.env.example: sAMAccountName, AD's groups, nested ones."""
    monkeypatch.setenv("LDAP_SERVER_URI", "ldaps://dc1.corp.example.com")
    monkeypatch.setenv("LDAP_USER_SEARCH_BASE", "OU=Staff,DC=corp,DC=example,DC=com")
    monkeypatch.setenv("LDAP_USER_SEARCH_FILTER", "(sAMAccountName=%(user)s)")
    monkeypatch.setenv("LDAP_GROUP_SEARCH_BASE", "OU=Groups,DC=corp,DC=example,DC=com")
    monkeypatch.setenv("LDAP_GROUP_TYPE", "nestedActiveDirectory")

    made = ldap_settings()

    assert made["AUTH_LDAP_USER_SEARCH"].filterstr == "(sAMAccountName=%(user)s)"
    assert made["AUTH_LDAP_GROUP_SEARCH"].base_dn == "OU=Groups,DC=corp,DC=example,DC=com"
    assert made["AUTH_LDAP_GROUP_SEARCH"].filterstr == "(objectClass=group)"
    assert isinstance(made["AUTH_LDAP_GROUP_TYPE"], NestedActiveDirectoryGroupType)
    assert made["AUTH_LDAP_CONNECTION_OPTIONS"][ldap.OPT_NETWORK_TIMEOUT] == 5
    assert made["AUTH_LDAP_CONNECTION_OPTIONS"][ldap.OPT_REFERRALS] == 0


def test_a_blank_variable_is_its_default(monkeypatch):
    """deploy/.env.example's blank lines (`LDAP_GROUP_SEARCH_BASE=`) mean the default."""
    monkeypatch.setenv("LDAP_SERVER_URI", "ldap://ldap.bank.example")
    monkeypatch.setenv("LDAP_USER_SEARCH_BASE", slapd.PEOPLE)
    for name in ("LDAP_USER_SEARCH_FILTER", "LDAP_GROUP_SEARCH_BASE", "LDAP_GROUP_TYPE"):
        monkeypatch.setenv(name, "")
    monkeypatch.setenv("LDAP_EMAIL_ATTR", "")

    made = ldap_settings()

    assert made["AUTH_LDAP_USER_SEARCH"].filterstr == "(uid=%(user)s)"
    assert made["AUTH_LDAP_GROUP_SEARCH"].base_dn == slapd.PEOPLE
    assert made["AUTH_LDAP_GROUP_SEARCH"].filterstr == "(objectClass=groupOfNames)"
    assert made["AUTH_LDAP_USER_ATTR_MAP"]["email"] == "mail"


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({}, "LDAP_USER_SEARCH_BASE must be too"),
        (
            {"LDAP_USER_SEARCH_BASE": "dc=bank,dc=example", "LDAP_GROUP_TYPE": "posixGroup"},
            "LDAP_GROUP_TYPE must be one of groupOfNames, activeDirectory, nestedActiveDirectory",
        ),
    ],
    ids=["no search base", "an unknown group type"],
)
def test_a_directory_half_set_up_is_refused_at_start(monkeypatch, variables, message):
    monkeypatch.setenv("LDAP_SERVER_URI", "ldap://127.0.0.1")
    monkeypatch.delenv("LDAP_USER_SEARCH_BASE", raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(ImproperlyConfigured, match=message):
        ldap_settings()


def test_a_portal_started_with_a_directory_asks_it_between_axes_and_local_accounts():
    env = {
        **os.environ,
        "LDAP_SERVER_URI": "ldaps://dc1.corp.example.com",
        "LDAP_USER_SEARCH_BASE": "OU=Staff,DC=corp,DC=example,DC=com",
        "LDAP_USER_SEARCH_FILTER": "(sAMAccountName=%(user)s)",
        "LDAP_GROUP_TYPE": "activeDirectory",
    }
    show = (
        "from django.conf import settings as s; "
        "print(*s.AUTHENTICATION_BACKENDS, s.AUTH_LDAP_USER_SEARCH.filterstr)"
    )

    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", show],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].split()[:3] == [
        "axes.backends.AxesStandaloneBackend",
        "django_auth_ldap.backend.LDAPBackend",
        "django.contrib.auth.backends.ModelBackend",
    ]
    assert "(sAMAccountName=%(user)s)" in result.stdout
