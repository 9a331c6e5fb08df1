"""Teams made and their members' roles changed: by a manager in the portal, and by the
directory's groups at each sign-in (LDAP or OpenID Connect: DIRECTORY_GROUPS maps a group
to a team and a role). Who may do what is scoring.packages.owners'.
"""

from collections.abc import Iterable

from django.conf import settings
from django.db import transaction
from django.utils.text import slugify

from scoring.models import Membership, Team, TeamRole
from scoring.packages import owners


class TeamError(ValueError):
    """A change of a team that cannot be made: the message says why; nothing changed."""


def make_team(name: str, by) -> Team:
    """A new team, its maker its first manager."""
    name = (name or "").strip()
    slug = slugify(name, allow_unicode=True)[:100]
    if not slug:
        raise TeamError("a team's name must contain a letter or a digit")
    if Team.objects.filter(slug=slug).exists():
        raise TeamError(f"a team named {name!r} exists already")
    with transaction.atomic():
        team = Team.objects.create(name=name[:100], slug=slug)
        Membership.objects.create(team=team, user=by, role=TeamRole.MANAGER)
    owners.forget_roles(by)
    return team


def set_role(team: Team, user, role: str) -> Membership:
    """Add a person to the team, or change their role there."""
    if role not in TeamRole.values:
        raise TeamError(f"a role is one of {', '.join(TeamRole.values)}, got {role!r}")
    if hasattr(user, "service_token"):
        raise TeamError("a token's role is set when it is made")
    with transaction.atomic():
        Team.objects.select_for_update().get(id=team.id)  # one change of managers at a time
        membership, _ = Membership.objects.update_or_create(
            team=team, user=user, defaults={"role": role}
        )
        keep_a_manager(team)
    owners.forget_roles(user)
    return membership


def remove_member(team: Team, user) -> None:
    with transaction.atomic():
        Team.objects.select_for_update().get(id=team.id)
        Membership.objects.filter(team=team, user=user).delete()
        keep_a_manager(team)
    owners.forget_roles(user)


def keep_a_manager(team: Team) -> None:
    """A team always keeps a manager: its members and tokens need one (staff aside)."""
    people = Membership.objects.filter(team=team, user__service_token__isnull=True)
    if not people.filter(role=TeamRole.MANAGER).exists():
        raise TeamError(f"{team.name} must keep a manager: make another one first")


def directory_groups() -> dict[str, list[tuple[str, str]]]:
    """DIRECTORY_GROUPS as group (lower case: directories compare names so) -> the (team
    slug, role) pairs it gives."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for group, (team, role) in settings.DIRECTORY_GROUPS.items():
        groups.setdefault(group.lower(), []).append((team, role))
    return groups


def apply_directory_groups(user, groups: Iterable[str]) -> None:
    """Make the user's teams and roles what their directory groups say, at each sign-in: a
    group added makes them a member (the highest role of their groups for each team), a
    group removed takes the membership it gave away. Roles given in the portal are left
    as they are, unless a group now gives that team."""
    mapping = directory_groups()
    wanted: dict[str, str] = {}
    for group in groups:
        for slug, role in mapping.get(group.lower(), ()):
            if slug not in wanted or owners.RANK[role] > owners.RANK[wanted[slug]]:
                wanted[slug] = role
    with transaction.atomic():
        for slug, role in wanted.items():
            team, _ = Team.objects.get_or_create(slug=slug, defaults={"name": slug})
            Membership.objects.update_or_create(
                team=team, user=user, defaults={"role": role, "from_directory": True}
            )
        given = Membership.objects.filter(user=user, from_directory=True)
        given.exclude(team__slug__in=wanted).delete()
    owners.forget_roles(user)
