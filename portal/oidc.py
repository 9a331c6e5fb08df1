"""Sign-in through an OpenID Connect provider (mozilla-django-oidc): the bank's single
sign-on beside the local accounts. Off unless OIDC_ENABLED.

The provider's endpoints are read at each sign-in (from its discovery document, unless they
are set one by one), and the provider is asked once before the browser is sent to it: one
that is down, or answers with an error at any step, brings the person back to the login
page with a sentence that says so, never a stack trace. At each sign-in the user's name,
email and teams are made what the provider says: the groups claim goes through
DIRECTORY_GROUPS as LDAP groups do (scoring.packages.teams.apply_directory_groups).
"""

import logging
import re

import jwt
import requests
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import resolve_url
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from scoring.packages import teams

log = logging.getLogger(__name__)

# Our settings (and mozilla-django-oidc's attributes) -> the discovery document's keys.
ENDPOINTS = {
    "OIDC_OP_AUTHORIZATION_ENDPOINT": "authorization_endpoint",
    "OIDC_OP_TOKEN_ENDPOINT": "token_endpoint",
    "OIDC_OP_USER_ENDPOINT": "userinfo_endpoint",
    "OIDC_OP_JWKS_ENDPOINT": "jwks_uri",
}


class SignInRefused(Exception):
    """A sign-in through the provider that cannot go on: the message is the sentence the
    login page shows."""


def provider_name() -> str:
    return settings.OIDC_PROVIDER_NAME


def unreachable() -> SignInRefused:
    return SignInRefused(
        f"{provider_name()} did not answer, or answered with an error, so you are not signed "
        "in. Try again in a few minutes."
    )


def unverified() -> SignInRefused:
    return SignInRefused(
        f"The answer of {provider_name()} could not be verified, so you are not signed in. "
        "Start again from this page."
    )


def answer(url: str) -> dict:
    """The provider's JSON at `url`, or SignInRefused (the reason goes to the log)."""
    try:
        response = requests.get(url, timeout=settings.OIDC_TIMEOUT)
        response.raise_for_status()
        return response.json()
    except (requests.RequestException, ValueError) as exc:
        log.warning("OpenID provider at %s: %s", url, exc)
        raise unreachable() from exc


def endpoints() -> dict[str, str]:
    """The provider's endpoints: those set one by one, the others from the discovery document
    of OIDC_ISSUER, read now (a provider may move them; a sign-in is rare enough)."""
    named = {setting: getattr(settings, setting) for setting in ENDPOINTS}
    if all(named.values()):
        return named
    document = answer(settings.OIDC_ISSUER.rstrip("/") + "/.well-known/openid-configuration")
    found = {setting: named[setting] or document.get(key, "") for setting, key in ENDPOINTS.items()}
    if missing := [key for setting, key in ENDPOINTS.items() if not found[setting]]:
        log.warning("OpenID provider's discovery document has no %s", ", ".join(missing))
        raise unreachable()
    return found


def groups_of(claims: dict) -> list[str]:
    """The groups claim as a list of names: providers send a list, a lone name, or nothing."""
    value = claims.get(settings.OIDC_GROUPS_CLAIM)
    if value is None:
        log.info("OpenID claims of %s carry no %r", claims.get("sub"), settings.OIDC_GROUPS_CLAIM)
        return []
    if isinstance(value, str):
        return [value]
    return [group for group in value if isinstance(group, str)] if isinstance(value, list) else []


class Backend(OIDCAuthenticationBackend):
    """Signs in the person the provider names (by OIDC_USERNAME_CLAIM, preferred_username by
    default, as LDAP signs in by user name), making the account at the first sign-in, and
    applies their groups at each one."""

    def __init__(self, *args, **kwargs):
        # Django makes a backend for every authenticate() call, the password form's too: the
        # provider is asked only when a sign-in comes back from it (authenticate below).
        self.UserModel = get_user_model()

    def authenticate(self, request: HttpRequest | None, **kwargs):
        # Only the callback passes a nonce; a password form's call is not ours.
        if request is None or "nonce" not in kwargs or not settings.OIDC_ENABLED:
            return None
        for setting, url in endpoints().items():
            setattr(self, setting, url)
        self.OIDC_RP_CLIENT_ID = settings.OIDC_RP_CLIENT_ID
        self.OIDC_RP_CLIENT_SECRET = settings.OIDC_RP_CLIENT_SECRET
        self.OIDC_RP_SIGN_ALGO = settings.OIDC_RP_SIGN_ALGO
        self.OIDC_RP_IDP_SIGN_KEY = None
        try:
            return super().authenticate(request, **kwargs)
        except requests.RequestException as exc:
            log.warning("OpenID sign-in: the provider failed: %s", exc)
            raise unreachable() from exc
        except (SuspiciousOperation, jwt.InvalidTokenError, jwt.PyJWKError) as exc:
            log.warning("OpenID sign-in: the provider's answer is not valid: %s", exc)
            raise unverified() from exc

    def get_userinfo(self, access_token, id_token, payload):
        """The ID token's claims with the userinfo endpoint's over them: some providers put
        the groups in one only."""
        return {**payload, **super().get_userinfo(access_token, id_token, payload)}

    def verify_claims(self, claims: dict) -> bool:
        username = claims.get(settings.OIDC_USERNAME_CLAIM)
        if not isinstance(username, str) or not username.strip():
            raise SignInRefused(
                f"{provider_name()} did not say who you are (its answer has no "
                f"{settings.OIDC_USERNAME_CLAIM}), so you are not signed in."
            )
        if len(username) > self.UserModel._meta.get_field("username").max_length:
            raise SignInRefused(f"Your user name at {provider_name()} is too long for Dropscore.")
        return True

    def filter_users_by_claims(self, claims: dict):
        # Directories compare names without case, as the LDAP sign-in does.
        return self.UserModel.objects.filter(
            username__iexact=claims[settings.OIDC_USERNAME_CLAIM].strip()
        )

    def create_user(self, claims: dict):
        user = self.UserModel.objects.create_user(claims[settings.OIDC_USERNAME_CLAIM].strip())
        return self.update_user(user, claims)

    def update_user(self, user, claims: dict):
        """The account's email and names as the provider has them, and its teams as the
        groups claim says (DIRECTORY_GROUPS), at each sign-in."""
        if hasattr(user, "service_token"):
            raise SignInRefused(f"{user.username} is a service token's account: it cannot sign in.")
        fields = {"email": "email", "first_name": "given_name", "last_name": "family_name"}
        changed = []
        for field, claim in fields.items():
            value = claims.get(claim)
            if isinstance(value, str) and value and value != getattr(user, field):
                setattr(user, field, value[: user._meta.get_field(field).max_length])
                changed.append(field)
        if changed:
            user.save(update_fields=changed)
        teams.apply_directory_groups(user, groups_of(claims))
        return user

    def get_user(self, user_id):
        # mozilla-django-oidc's own lets a deactivated account's session go on.
        return ModelBackend.get_user(self, user_id)


class SignIn(OIDCAuthenticationRequestView):
    """/oidc/authenticate/: asks the provider first, then sends the browser to it."""

    def get(self, request: HttpRequest) -> HttpResponse:
        if not settings.OIDC_ENABLED:
            raise Http404("Sign-in through OpenID Connect is off")
        try:
            found = endpoints()
            answer(found["OIDC_OP_JWKS_ENDPOINT"])  # the provider is up, its keys readable
        except SignInRefused as exc:
            messages.error(request, str(exc))
            return HttpResponseRedirect(resolve_url(settings.LOGIN_REDIRECT_URL_FAILURE))
        self.OIDC_OP_AUTH_ENDPOINT = found["OIDC_OP_AUTHORIZATION_ENDPOINT"]
        self.OIDC_RP_CLIENT_ID = settings.OIDC_RP_CLIENT_ID
        return super().get(request)


# RFC 6749's error codes are plain words; anything else in the link is not shown.
ERROR_CODE = re.compile(r"[a-z_]{1,40}")


class Callback(OIDCAuthenticationCallbackView):
    """/oidc/callback/: where the provider sends the browser back, with a code or an error."""

    problem = ""

    @property
    def failure_url(self) -> str:
        return resolve_url(settings.LOGIN_REDIRECT_URL_FAILURE)

    def get(self, request: HttpRequest) -> HttpResponse:
        if not settings.OIDC_ENABLED:
            raise Http404("Sign-in through OpenID Connect is off")
        if error := request.GET.get("error"):
            log.info(
                "OpenID provider refused a sign-in: %s %s",
                error,
                request.GET.get("error_description", ""),
            )
            code = f" ({error})" if ERROR_CODE.fullmatch(error) else ""
            self.problem = f"{provider_name()} did not sign you in{code}."
        try:
            return super().get(request)
        except SignInRefused as exc:
            self.problem = str(exc)
        except SuspiciousOperation as exc:  # the state is not this browser's (or has expired)
            log.warning("OpenID callback: %s", exc)
            self.problem = str(unverified())
        return self.login_failure()

    def login_failure(self) -> HttpResponse:
        user = getattr(self, "user", None)
        if not self.problem and user is not None and not user.is_active:
            self.problem = "Your Dropscore account is disabled: ask an administrator."
        messages.error(
            self.request, self.problem or f"Signing in through {provider_name()} failed."
        )
        return super().login_failure()


def sign_in_context(request: HttpRequest) -> dict:
    """A context processor: the login page's "Sign in with ..." button, when it is on."""
    return {"oidc_provider_name": provider_name()} if settings.OIDC_ENABLED else {}
