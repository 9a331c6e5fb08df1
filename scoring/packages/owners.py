"""Who may do what with a model: one home for the rules that the pages, the API, the
online endpoints and the access walk (tests/test_access_roles.py) all read.

A model belongs to a person or to a team. Its person may do everything with it; on a
team's model a viewer reads (pages, runs, reports, scores, history, downloads, online
answers), a member also changes it, a manager also approves another's change, deletes
models and manages the team. Staff may do everything. Anyone else does not see the
model at all: for them it does not exist (a 404, never a 403 that would confirm it).
"""

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Q

from scoring.models import Deployment, Membership, ServiceToken, Team, TeamRole

RANK = {TeamRole.VIEWER: 1, TeamRole.MEMBER: 2, TeamRole.MANAGER: 3}
# Each action on a model, with the least team role that may take it. The model's own
# person and staff may take them all.
ACTIONS = {
    "view": TeamRole.VIEWER,  # its page, runs, reports, scores, history, comparisons
    "download": TeamRole.VIEWER,  # its packages and scores
    "predict": TeamRole.VIEWER,  # its online answers: they change nothing
    "deploy": TeamRole.MEMBER,  # a new version
    "pause": TeamRole.MEMBER,
    "resume": TeamRole.MEMBER,
    "score": TeamRole.MEMBER,
    "settings": TeamRole.MEMBER,
    "online": TeamRole.MEMBER,
    "promote": TeamRole.MEMBER,  # asked; with REQUIRE_APPROVAL another approves
    "rollback": TeamRole.MEMBER,
    "share": TeamRole.MEMBER,
    "withdraw": TeamRole.MEMBER,  # the asker's own change; an approver's any
    "approve": TeamRole.MANAGER,  # never one's own request (roles.approve)
    "delete": TeamRole.MANAGER,
    "hand_over": TeamRole.MANAGER,
}
# How a refusal says an action: "only a member or manager may <verb> its models".
VERBS = {
    "deploy": "deploy versions of",
    "score": "score",
    "settings": "change the settings of",
    "online": "switch online or off",
    "share": "change the split of",
    "withdraw": "withdraw changes of",
    "approve": "approve changes of",
    "hand_over": "hand over",
}
# Actions on a team itself.
MANAGE_TEAM = TeamRole.MANAGER


class NotAllowed(Exception):
    """The user sees the model but their role does not allow this; the message says why."""


def team_roles(user) -> dict[int, str]:
    """The user's role in each of their teams, by team id: one query a request (kept on
    the user object, which Django makes anew for each request)."""
    if not user.is_authenticated:
        return {}
    if not hasattr(user, "_team_roles"):
        memberships = Membership.objects.filter(user=user).values_list("team_id", "role")
        user._team_roles = dict(memberships)
    return user._team_roles


def teams_of(user) -> list:
    """The user's teams (each with `role`, theirs in it), in the same one query as
    team_roles, which it fills."""
    memberships = Membership.objects.filter(user=user).select_related("team")
    teams = []
    for membership in memberships.order_by("team__name"):
        membership.team.role = membership.role
        teams.append(membership.team)
    user._team_roles = {team.id: team.role for team in teams}
    return teams


def forget_roles(user) -> None:
    """After a change of the user's memberships in this request."""
    user.__dict__.pop("_team_roles", None)


def visible(user) -> Q:
    """The models the user sees: their own and their teams' (staff: all)."""
    if user.is_staff:
        return Q()
    return Q(owner=user.pk) | Q(team__in=list(team_roles(user)))


def role_on(user, deployment: Deployment) -> str | None:
    """ "staff", "owner" (the model's person), the user's team role, or None (not seen)."""
    if user.is_staff:
        return "staff"
    if deployment.team_id is None:
        return "owner" if deployment.owner_id == user.pk else None
    return team_roles(user).get(deployment.team_id)


def table() -> list[dict]:
    """Who may do what, as the Help page shows it and the access walk checks it: each
    action with whether a viewer, a member and a manager of the model's team may take it."""
    return [
        {"action": action, **{role: reaches(role, action) for role in TeamRole.values}}
        for action in ACTIONS
    ]


def may(user, deployment: Deployment, action: str) -> bool:
    return reaches(role_on(user, deployment), action)


def reaches(role: str | None, action: str) -> bool:
    """Whether a role ("staff", "owner", a team role or None) may take the action."""
    if role is None:
        return False
    if role in ("staff", "owner"):
        return True
    return RANK[role] >= RANK[ACTIONS[action]]


def require(user, deployment: Deployment, action: str) -> None:
    """NotAllowed unless the user may take the action (callers have made sure they see it)."""
    if not may(user, deployment, action):
        role = role_on(user, deployment)
        needed = ACTIONS[action]
        raise NotAllowed(
            f"you are a {role} of the team {deployment.team.name}: only a "
            f"{' or '.join(r for r in TeamRole.values if RANK[r] >= RANK[needed])} may "
            f"{VERBS.get(action, action)} its models"
        )


def may_deploy_to(user, team) -> bool:
    """A new model or version in a team (or, without one, the user's own)."""
    if team is None:
        return not hasattr(user, "service_token")  # a team token deploys to its team only
    if user.is_staff:
        return True
    role = team_roles(user).get(team.id)
    return role is not None and RANK[role] >= RANK[ACTIONS["deploy"]]


def manages(user, team) -> bool:
    if user.is_staff:
        return True
    role = team_roles(user).get(team.id)
    return role is not None and RANK[role] >= RANK[MANAGE_TEAM]


def approvers_group_member(user) -> bool:
    """Staff of APPROVERS_GROUP approve any model's change, as before teams."""
    return bool(user.is_staff and user.groups.filter(name=settings.APPROVERS_GROUP).exists())


def may_approve(user, deployment: Deployment, asked_by_id: int | None) -> bool:
    """Four eyes: never the one who asked; a manager of the model's team, or a staff
    member of the approvers' group."""
    if user.pk == asked_by_id:
        return False
    if deployment.team_id and team_roles(user).get(deployment.team_id) == TeamRole.MANAGER:
        return True
    return approvers_group_member(user)


def approvers(deployment: Deployment, asked_by_id: int | None) -> list[str]:
    """Who may approve a change the user `asked_by_id` asked for: the page names them."""
    who = Q(is_staff=True, groups__name=settings.APPROVERS_GROUP)
    if deployment.team_id:
        who |= Q(memberships__team=deployment.team_id, memberships__role=TeamRole.MANAGER)
    people = get_user_model().objects.filter(who, is_active=True, service_token__isnull=True)
    return sorted(set(people.exclude(pk=asked_by_id).values_list("username", flat=True)))


def team_for_upload(user, named: str | None):
    """The team an upload names (its slug or name) among the user's teams (any, for
    staff), or None for the user's own model; a team token's own team when it names none.
    An unknown name is a DeployError-like LookupError the caller shows."""
    named = (named or "").strip()
    token = ServiceToken.objects.select_related("team").filter(user=user.pk).first()
    if not named:
        return token.team if token else None
    teams = Team.objects.all() if user.is_staff else Team.objects.filter(id__in=team_roles(user))
    team = teams.filter(Q(slug=named) | Q(name=named)).first()
    if team is None:
        raise NoSuchTeam(f"you are in no team named {named!r}")
    return team


class NoSuchTeam(LookupError):
    """An upload named a team the user is not in (or that does not exist: the same)."""
