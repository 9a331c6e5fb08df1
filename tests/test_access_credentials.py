"""Credentials: API tokens revoked (by their user, and by staff in the admin) and logins
rate-limited. Every URL pattern walked as another user, a stranger and without a CSRF
token: tests/test_access.py.
"""

from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.contrib.auth.models import Permission
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.factories.cast import api_client_for, session

pytestmark = [pytest.mark.django_db(transaction=True)]


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
