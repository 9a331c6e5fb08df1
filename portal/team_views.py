"""Team pages: my teams (and making one), a team's members and roles, models, quota,
report address and service tokens. Its members see a team; its managers change it."""

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST, require_safe

from portal import team_tokens
from scoring.models import Deployment, Membership, Team, TeamRole
from scoring.packages import owners, quotas, teams
from scoring.packages.contract import ContractError, check_email
from scoring.packages.teams import TeamError

TEAM_ACTIONS = ("member", "remove", "token", "revoke", "settings")


def teams_for(user):
    """The teams a user sees: their own (all of them for staff)."""
    if user.is_staff:
        return Team.objects.all()
    return Team.objects.filter(id__in=list(owners.team_roles(user)))


@login_required
def teams_page(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        if hasattr(request.user, "service_token"):
            raise PermissionDenied("a token cannot make teams")
        try:
            team = teams.make_team(request.POST.get("name"), request.user)
        except TeamError as exc:
            messages.error(request, str(exc))
            return redirect("teams")
        messages.success(request, f"The team {team.name} is made; you are its manager.")
        return redirect("team", slug=team.slug)
    roles = owners.team_roles(request.user)
    listed = [
        {"team": team, "role": roles.get(team.id, "staff")}
        for team in teams_for(request.user).order_by("name")
    ]
    return render(request, "portal/teams.html", {"teams": listed})


@login_required
@require_safe  # its forms post to team_action
def team_page(request: HttpRequest, slug: str) -> HttpResponse:
    team = get_object_or_404(teams_for(request.user), slug=slug)
    members = Membership.objects.filter(team=team, user__service_token__isnull=True)
    return render(
        request,
        "portal/team.html",
        {
            "team": team,
            "role": owners.team_roles(request.user).get(team.id, "staff"),
            "manages": owners.manages(request.user, team),
            "members": members.select_related("user").order_by("user__username"),
            "tokens": team.tokens.select_related("created_by").order_by("revoked_at", "name"),
            "models": Deployment.objects.filter(team=team).order_by("name")[:200],
            "model_count": Deployment.objects.filter(team=team).count(),
            "quota": quotas.usage(team),
            "roles": TeamRole.choices,
            "token_roles": [TeamRole.VIEWER, TeamRole.MEMBER],
            "new_key": request.session.pop("new_token_key", None),
        },
    )


@login_required
@require_POST
def team_action(request: HttpRequest, slug: str, action: str) -> HttpResponse:
    team = get_object_or_404(teams_for(request.user), slug=slug)
    if action not in TEAM_ACTIONS:
        return HttpResponse(status=404)
    if not owners.manages(request.user, team):
        raise PermissionDenied(f"only a manager of {team.name} may change it")
    post = request.POST
    try:
        if action == "member":
            person = person_named(post.get("username"))
            teams.set_role(team, person, post.get("role"))
            messages.success(request, f"{person.username} is a {post.get('role')} of {team.name}.")
        elif action == "remove":
            person = person_named(post.get("username"))
            teams.remove_member(team, person)
            messages.success(request, f"{person.username} is no longer in {team.name}.")
        elif action == "token":
            token, key = team_tokens.make(team, post.get("name"), post.get("role"), request.user)
            # Shown once, on the page this redirects to; never stored in the clear elsewhere.
            request.session["new_token_key"] = {"name": token.user.username, "key": key}
            messages.success(request, f"The token {token.user.username} is made.")
        elif action == "revoke":
            token_id = post.get("token", "")
            token = (
                team.tokens.filter(revoked_at__isnull=True, id=int(token_id)).first()
                if token_id.isdigit()
                else None
            )
            if token is None:
                raise TeamError("that token is not one of the team's, or is revoked already")
            team_tokens.revoke(token)
            messages.success(request, f"The token {token.user.username} is revoked.")
        elif action == "settings":
            team.report_email = (
                check_email(post["report_email"]) if post.get("report_email") else ""
            )
            team.save(update_fields=["report_email"])
            messages.success(request, "Saved.")
    except (TeamError, ContractError) as exc:
        messages.error(request, str(exc))
    return redirect("team", slug=team.slug)


def person_named(username: str | None):
    """A person's account by username (never a token's)."""
    people = get_user_model().objects.filter(service_token__isnull=True, is_active=True)
    person = people.filter(username=(username or "").strip()).first()
    if person is None:
        raise TeamError(f"nobody is called {username!r} here: they sign in once first")
    return person
