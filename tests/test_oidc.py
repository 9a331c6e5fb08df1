"""Sign-in through OpenID Connect against a real provider: django-oauth-toolkit's, a project
of its own (tests/oidc_provider/) that these tests start on loopback. A `requests` session
plays the browser through the whole authorization-code flow over HTTP: the portal's login
page, its "Sign in with" button, the provider's login form, the callback, signed in.
"""

import html
import os
import re
import subprocess
import sys
from urllib.parse import urljoin

import pytest
import requests
from django.contrib.auth.models import User

from scoring.models import Membership, Team
from scoring.packages import owners
from tests.factories import cast
from tests.faults import closed_port
from tests.oidc_provider import server

PASSWORD = "alice-directory-password"
NAMES = {"email": "alice@bank.example", "first_name": "Alice", "last_name": "Liddell"}


@pytest.fixture(scope="module")
def provider(live_server, tmp_path_factory):
    provider = server.start(
        tmp_path_factory.mktemp("oidc-provider"), f"{live_server.url}/oidc/callback/"
    )
    yield provider
    provider.stop()


@pytest.fixture
def oidc_on(settings):
    """The portal's settings as OIDC_ENABLED and its variables make them (see
    test_the_settings_add_the_backend_after_the_local_accounts)."""
    settings.OIDC_ENABLED = True
    settings.OIDC_PROVIDER_NAME = "Bank SSO"
    settings.OIDC_RP_CLIENT_ID = server.CLIENT_ID
    settings.OIDC_RP_CLIENT_SECRET = server.CLIENT_SECRET
    settings.AUTHENTICATION_BACKENDS = [*settings.AUTHENTICATION_BACKENDS, "portal.oidc.Backend"]
    settings.DIRECTORY_GROUPS = {
        "ds-retail-managers": ("retail", "manager"),
        "ds-retail": ("retail", "member"),
    }
    return settings


@pytest.fixture
def oidc(oidc_on, provider):
    oidc_on.OIDC_ISSUER = provider.issuer
    return oidc_on


def field(page: requests.Response, pattern: str) -> str:
    found = re.search(pattern, page.text)
    assert found, f"{pattern!r} not on {page.url}:\n{page.text[:2000]}"
    return html.unescape(found[1])


def to_the_provider(
    portal: str, start: str = "/login/"
) -> tuple[requests.Session, requests.Response]:
    """A browser at the portal's login page follows its "Sign in with" button."""
    browser = requests.Session()
    login = browser.get(f"{portal}{start}")
    return browser, browser.get(portal + field(login, r'id="oidc-sign-in" href="([^"]+)"'))


def provider_login(browser: requests.Session, form: requests.Response, **kwargs):
    """Fills in and sends the provider's login form (the provider then sends the browser back
    to the portal, asking nothing more: the portal's client skips the consent page)."""
    assert "Test provider" in form.text, form.text[:2000]
    data = {
        "csrfmiddlewaretoken": field(form, r'name="csrfmiddlewaretoken" value="([^"]+)"'),
        "username": "alice",
        "password": PASSWORD,
        "next": field(form, r'name="next" value="([^"]*)"'),
    }
    return browser.post(form.url, data=data, **kwargs)


def sign_in(portal: str, start: str = "/login/") -> requests.Response:
    browser, form = to_the_provider(portal, start)
    return provider_login(browser, form)


def retail_role(username: str) -> str | None:
    membership = Membership.objects.filter(user__username=username, team__slug="retail").first()
    return membership.role if membership else None


def test_the_groups_claim_makes_a_manager_and_its_loss_demotes_at_the_next_sign_in(
    oidc, provider, live_server
):
    provider.person("alice", PASSWORD, ["ds-retail-managers", "ds-retail", "canteen"], **NAMES)

    page = sign_in(live_server.url)

    assert page.url == f"{live_server.url}/"
    assert '<div class="user">\n        <span>alice</span>' in page.text
    alice = User.objects.get(username="alice")
    assert (alice.email, alice.first_name, alice.last_name) == tuple(NAMES.values())
    assert not alice.has_usable_password()  # the provider holds it
    assert owners.manages(alice, Team.objects.get(slug="retail"))
    assert retail_role("alice") == "manager"

    provider.person("alice", PASSWORD, ["ds-retail", "canteen"], **NAMES)
    sign_in(live_server.url)

    alice = User.objects.get(username="alice")  # a new object: roles are cached on the user
    assert retail_role("alice") == "member"
    assert not owners.manages(alice, Team.objects.get(slug="retail"))
    assert User.objects.filter(username__iexact="alice").count() == 1

    provider.person("alice", PASSWORD, [], **NAMES)
    sign_in(live_server.url)
    assert retail_role("alice") is None


def test_a_local_account_of_the_same_name_is_the_one_signed_in_and_keeps_its_password(
    oidc, provider, live_server, owner
):
    provider.person("alice", PASSWORD, ["ds-retail"], **NAMES)

    page = sign_in(live_server.url, start="/status/")  # sent to the login page, then back

    assert page.url == f"{live_server.url}/status/"
    owner.refresh_from_db()
    assert retail_role("alice") == "member"
    assert owner.check_password(cast.CAST["owner"][2])
    assert User.objects.count() == 1


def test_the_endpoints_set_one_by_one_need_no_discovery(oidc, provider, live_server):
    oidc.OIDC_ISSUER = ""
    oidc.OIDC_OP_AUTHORIZATION_ENDPOINT = f"{provider.issuer}/authorize/"
    oidc.OIDC_OP_TOKEN_ENDPOINT = f"{provider.issuer}/token/"
    oidc.OIDC_OP_USER_ENDPOINT = f"{provider.issuer}/userinfo/"
    oidc.OIDC_OP_JWKS_ENDPOINT = f"{provider.issuer}/.well-known/jwks.json"
    provider.person("alice", PASSWORD, ["ds-retail-managers"], **NAMES)

    page = sign_in(live_server.url)

    assert page.url == f"{live_server.url}/"
    assert retail_role("alice") == "manager"


def test_a_deactivated_account_is_not_signed_in_through_the_provider(
    oidc, provider, live_server, owner
):
    owner.is_active = False
    owner.save()
    provider.person("alice", PASSWORD, ["ds-retail"], **NAMES)

    page = sign_in(live_server.url)

    assert page.url == f"{live_server.url}/login/"
    assert "Your Dropscore account is disabled: ask an administrator." in page.text
    assert '<div class="user">' not in page.text


def test_a_provider_that_is_down_is_named_on_the_login_page(oidc, live_server):
    oidc.OIDC_ISSUER = f"http://127.0.0.1:{closed_port()}/o"

    browser, page = to_the_provider(live_server.url)

    assert page.url == f"{live_server.url}/login/"
    assert "Bank SSO did not answer, or answered with an error, so you are not signed in." in (
        html.unescape(page.text)
    )
    assert 'id="oidc-sign-in"' in page.text  # the button stays, to try again


def test_a_provider_that_goes_down_before_the_browser_comes_back_is_named_too(
    oidc, provider, live_server
):
    provider.person("alice", PASSWORD, ["ds-retail-managers"], **NAMES)
    browser, form = to_the_provider(live_server.url)
    authorize = provider_login(browser, form, allow_redirects=False)
    back = browser.get(urljoin(form.url, authorize.headers["Location"]), allow_redirects=False)
    assert back.headers["Location"].startswith(f"{live_server.url}/oidc/callback/?code=")

    oidc.OIDC_ISSUER = f"http://127.0.0.1:{closed_port()}/o"
    page = browser.get(back.headers["Location"])

    assert page.url == f"{live_server.url}/login/"
    assert "Bank SSO did not answer" in html.unescape(page.text)
    assert not User.objects.filter(username="alice").exists()


def test_an_error_of_the_provider_is_said_in_a_sentence(oidc, provider, live_server):
    oidc.OIDC_RP_SCOPES = "openid groups payroll"  # a scope the provider does not know
    provider.person("alice", PASSWORD, ["ds-retail-managers"], **NAMES)

    page = sign_in(live_server.url)

    assert page.url == f"{live_server.url}/login/"
    assert "Bank SSO did not sign you in (invalid_scope)." in html.unescape(page.text)
    assert not User.objects.filter(username="alice").exists()


def test_a_made_up_error_description_is_not_shown(oidc_on, client):
    page = client.get(
        "/oidc/callback/",
        {"error": "Call +1 555 0100 now", "error_description": "Your account is locked"},
        follow=True,
    )

    assert page.redirect_chain == [("/login/", 302)]
    assert "Bank SSO did not sign you in." in page.content.decode()
    assert "555" not in page.content.decode() and "locked" not in page.content.decode()


def test_local_accounts_still_log_in_with_the_provider_on(oidc_on, client, owner):
    page = client.post("/login/", {"username": "alice", "password": cast.CAST["owner"][2]})

    assert page.status_code == 302
    assert client.get("/").context["user"] == owner


def test_off_by_default_no_button_and_no_route(client):
    assert 'id="oidc-sign-in"' not in client.get("/login/").content.decode()
    assert client.get("/oidc/authenticate/").status_code == 404
    assert client.get("/oidc/callback/?code=x&state=y").status_code == 404


def test_the_settings_add_the_backend_after_the_local_accounts():
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "OIDC_ENABLED": "true",
        "OIDC_ISSUER": "https://sso.bank.example/realms/staff",
        "OIDC_RP_CLIENT_ID": "dropscore",
        "OIDC_RP_CLIENT_SECRET": "s3cret",
    }
    code = "from django.conf import settings; print(settings.AUTHENTICATION_BACKENDS)"
    printed = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout

    assert printed.strip() == str(
        [
            "axes.backends.AxesStandaloneBackend",
            "django.contrib.auth.backends.ModelBackend",
            "portal.oidc.Backend",
        ]
    )

    del env["OIDC_ISSUER"], env["OIDC_RP_CLIENT_SECRET"]
    failed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert failed.returncode == 1
    assert (
        "OIDC_ENABLED needs OIDC_RP_CLIENT_SECRET and OIDC_ISSUER (or all four "
        "OIDC_OP_*_ENDPOINT)" in failed.stderr
    )
