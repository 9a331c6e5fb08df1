"""A team's service tokens: for a CI pipeline that deploys or a dashboard that reads,
belonging to the team, not to a person.

Each token is an account of its own (`<team>/<name>`, no password, so it never signs in
to the pages) with a membership of the token's role and a DRF token key: every rule,
view and record reads it as any user, so its changes are recorded as its own
(actor `<team>/<name>`, via api). Revoking deletes the key, which the API looks up at
each request: refused at once.
"""

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions
from rest_framework.authtoken.models import Token

from scoring.models import Membership, ServiceToken, Team, TeamRole
from scoring.packages.teams import TeamError

# A token's last use is written at most this often: not a write for every request.
LAST_USE_EVERY = timedelta(minutes=1)


def make(team: Team, name: str, role: str, by) -> tuple[ServiceToken, str]:
    """A new token of the team and its key, shown once."""
    name = (name or "").strip()
    if not name or any(c in name for c in "/\\ ") or len(name) > 60:
        raise TeamError("a token's name is a word of up to 60 characters, e.g. ci-deploy")
    if role not in (TeamRole.VIEWER, TeamRole.MEMBER):
        raise TeamError("a token's role is viewer or member")
    username = f"{team.slug}/{name}"
    users = get_user_model().objects
    if team.tokens.filter(name=name).exists() or users.filter(username=username).exists():
        raise TeamError(f"the team has a token named {name!r} already (revoked ones keep theirs)")
    with transaction.atomic():
        account = users.create_user(username=username, email="")  # an unusable password
        Membership.objects.create(team=team, user=account, role=role)
        token = ServiceToken.objects.create(
            team=team, user=account, name=name, role=role, created_by=by
        )
        key = Token.objects.create(user=account).key
    return token, key


def revoke(token: ServiceToken) -> None:
    """The key is gone at once; the account stays (inactive) for the record of its changes."""
    with transaction.atomic():
        Token.objects.filter(user=token.user).delete()
        Membership.objects.filter(user=token.user).delete()
        token.user.is_active = False
        token.user.save(update_fields=["is_active"])
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])


class TokenAuthentication(authentication.TokenAuthentication):
    """DRF's token authentication that also notes when a team's token was last used (the
    team page lists it); a person's token costs no extra query."""

    def authenticate_credentials(self, key):
        # As DRF's own, with the token's team row read in the same query.
        try:
            token = Token.objects.select_related("user__service_token").get(key=key)
        except Token.DoesNotExist:
            raise exceptions.AuthenticationFailed(_("Invalid token.")) from None
        user, now = token.user, timezone.now()
        if not user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        service = getattr(user, "service_token", None)
        if service and (
            service.last_used_at is None or now - service.last_used_at > LAST_USE_EVERY
        ):
            ServiceToken.objects.filter(id=service.id).update(last_used_at=now)
        return user, token
