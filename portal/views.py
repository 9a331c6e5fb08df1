"""Server-rendered pages: my models with the drop zone, a model's page, the API token."""

from datetime import date, datetime

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Prefetch, Q
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST, require_safe
from rest_framework.authtoken.models import Token

from portal import dashboard, listing, online_card, report_views, tokens
from portal.downloads import stream_package, stream_scores
from scoring import record
from scoring.models import (
    ChampionChange,
    Deployment,
    PackageVersion,
    Report,
    Role,
    ScoringRun,
)
from scoring.packages import deployments, handover, owners, params, quotas, roles, schedules
from scoring.packages.deployments import DeployError
from scoring.packages.storage import StorageError
from scoring.quality import ground_truth
from scoring.runs import dispatch
from scoring.runs.lifecycle import RunError


def deployments_for(user):
    """The deployments a user may see: their own and their teams' (owners.visible)."""
    queryset = Deployment.objects.select_related(
        "owner", "team", "champion", "challenger"
    ).prefetch_related(Prefetch("versions", queryset=PackageVersion.objects.order_by("-number")))
    return queryset.filter(owners.visible(user))


def comparisons_of(deployment: Deployment):
    """A model's comparisons of challenger and champion, newest first."""
    return deployment.comparisons.select_related("champion_run__version", "challenger_run__version")


def changes_of(deployment: Deployment):
    """A model's promotions and rollbacks, newest first."""
    return deployment.champion_changes.select_related(
        "version", "replaced", "requested_by", "approved_by"
    )


def runs_for(user):
    queryset = ScoringRun.objects.select_related("deployment", "version")
    return queryset.filter(deployment__in=Deployment.objects.filter(owners.visible(user)))


def get_deployment_for_user(
    request: HttpRequest, deployment_id: int, action: str = "view"
) -> Deployment:
    """The deployment, or 404 when the user does not see it: no view can forget ownership;
    403 when they see it but their role does not allow the action (owners.ACTIONS)."""
    deployment = get_object_or_404(deployments_for(request.user), id=deployment_id)
    allow(request.user, deployment, action)
    return deployment


def allow(user, deployment: Deployment, action: str) -> None:
    """PermissionDenied (a 403, in the pages and the API alike) unless the user's role on
    the model allows the action."""
    try:
        owners.require(user, deployment, action)
    except owners.NotAllowed as exc:
        raise PermissionDenied(str(exc)) from None


def models_context(request: HttpRequest) -> dict:
    """A page of the user's own models as the query string filters, searches and sorts
    them, with the count of each status; BadQuery when the query string is wrong."""
    query = listing.read(listing.ModelsQuery(request.GET, dashboard.MODEL_LEVELS))
    teams = owners.teams_of(request.user)
    own = deployments_for(request.user).filter(
        Q(owner=request.user, team__isnull=True) | Q(team__in=teams)
    )
    if query["owner"] == "me":
        own = own.filter(team__isnull=True)
    elif query["owner"]:
        team = next((t for t in teams if t.slug == query["owner"]), None)
        if team is None:
            raise listing.BadQuery(f"owner: you are in no team {query['owner']!r}")
        own = own.filter(team=team)
    if query["q"]:
        own = own.filter(name__icontains=query["q"])
    counts = dashboard.level_counts(own, dashboard.model_level(), dashboard.MODEL_LEVELS)
    listed = own.alias(level=dashboard.model_level())
    if query["status"]:
        listed = listed.filter(level=query["status"])
    listed = listing.sorted_models(dashboard.with_last_runs(listed), query["sort"])
    page = listing.page_of(
        listed, query["page"], query, count=listing.listed_count(counts, query["status"])
    )
    page["rows"] = dashboard.attach_last_runs(page["rows"])
    for deployment in page["rows"]:  # the row's buttons: what the user's role allows
        deployment.may_change = owners.may(request.user, deployment, "pause")
        deployment.may_delete = owners.may(request.user, deployment, "delete")
    return {
        "deployments": page["rows"],
        "listing": page,
        "query": query,
        "status_options": listing.status_options(counts, query),
        "sorts": listing.MODEL_SORTS,
        "quota": quotas.usage(request.user),
        "teams": teams,
        "deploy_teams": [t for t in teams if owners.may_deploy_to(request.user, t)],
        # Only the page's rows are polled, so only theirs make the page poll faster.
        "pending": any(
            d.latest_version and d.latest_version.state == PackageVersion.State.PENDING
            for d in page["rows"]
        ),
    }


@login_required
def models_page(request: HttpRequest) -> HttpResponse:
    try:
        context = models_context(request)
    except listing.BadQuery as exc:
        messages.error(request, f"That list cannot be shown: {exc}")
        return redirect("models")
    return render(
        request,
        "portal/models.html",
        {**context, "presets": schedules.PRESETS, "default_email": request.user.email},
    )


@login_required
@require_GET
def models_status(request: HttpRequest) -> JsonResponse:
    """What the models page polls, with the page's own query string: the rows of that page
    (validation results, runs that ended) without reloading."""
    try:
        context = models_context(request)
    except listing.BadQuery as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    return JsonResponse(
        {
            "rows": render_to_string("portal/_model_rows.html", context, request=request),
            "quota": context["quota"]["text"],
            "pending": context["pending"],
            "counts": {o["status"] or "all": o["count"] for o in context["status_options"]},
        }
    )


def posted_schedule(request: HttpRequest) -> str | None:
    """The schedule of a form: a preset from the select, or the cron field for "custom"."""
    if request.POST.get("schedule") == "custom":
        return request.POST.get("cron")
    return request.POST.get("schedule")


def posted_date(request: HttpRequest) -> date | None:
    """The date of "Score now", or None for today; a bad one is a DeployError."""
    text = request.POST.get("date", "").strip()
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise DeployError(f"{text[:20]!r} is not a date: use YYYY-MM-DD") from None


@login_required
@require_POST
def upload(request: HttpRequest) -> JsonResponse:
    """The drop zone posts here; answers JSON for the page's script."""
    file = request.FILES.get("file")  # parses the upload; the handler may set upload_error
    error = getattr(request, "upload_error", None)
    if error or file is None:
        return JsonResponse(
            {"error": error or "choose a .dill or .pkl package file to upload"}, status=400
        )
    try:
        version = deployments.deploy(
            request.user,
            file,
            file.name,
            file.size,
            team=request.POST.get("team"),
            name=request.POST.get("name"),
            email=request.POST.get("email"),
            schedule=posted_schedule(request),
            timezone=request.POST.get("timezone"),
            max_slice_age_days=request.POST.get("max_slice_age_days"),
            role=request.POST.get("role"),
            share=request.POST.get("share"),
        )
    except DeployError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    except owners.NotAllowed as exc:
        return JsonResponse({"error": str(exc)}, status=403)
    except StorageError as exc:
        return JsonResponse({"error": str(exc)}, status=503)
    return JsonResponse(
        {
            "deployment": version.deployment_id,
            "name": version.deployment.name,
            "version": version.number,
        },
        status=201,
    )


@login_required
@require_safe  # its forms post to the actions' own URLs
def model_page(request: HttpRequest, deployment_id: int) -> HttpResponse:
    deployment = get_deployment_for_user(request, deployment_id)
    return render(request, "portal/model.html", model_context(request, deployment))


def model_context(request: HttpRequest, deployment: Deployment) -> dict:
    """Everything a model's page shows (also under the answer of its Try-it form)."""
    current_version = deployment.champion
    visible_reports = report_views.visible(request.user)
    latest_checked = dashboard.latest_checked_run(deployment)
    online_check = dashboard.latest_online_check(deployment)
    package_params = (current_version or deployment.latest_version or PackageVersion()).package.get(
        "params"
    )
    return {
        "deployment": deployment,
        "versions": deployment.versions.all(),
        "runs": deployment.runs.select_related("version").prefetch_related(
            # A team's run is in each of its people's reports: link the viewer's own.
            Prefetch("reports", queryset=Report.objects.filter(visible_reports).only("id"))
        )[:50],
        "current_version": current_version,
        "presets": schedules.PRESETS,
        "next_runs": next_runs_or_none(deployment),
        "latest_checked": latest_checked,
        "top_features": dashboard.top_features(latest_checked and latest_checked.quality),
        "charts": dashboard.chart_data(deployment, latest_checked, current_version),
        "parameters": params.effective(package_params),
        "slice_age_default": params.value(package_params, "max_slice_age_days"),
        "ground_truth": ground_truth_context(deployment, current_version),
        "online_check": online_check,
        "online_features": dashboard.top_features(online_check and online_check.quality),
        **history_context(request, deployment),
        "roles": roles_context(request, deployment),
        "role": owners.role_on(request.user, deployment),
        "may": {action: owners.may(request.user, deployment, action) for action in owners.ACTIONS},
        "online": online_card.card(deployment),
        "hand_over_to": handover.targets(request.user, deployment),
    }


def history_context(request: HttpRequest, deployment: Deployment) -> dict:
    """A page of the model's record of changes (`?history=N`), newest first."""
    pager = listing.page_of(
        record.history(deployment.id), request.GET.get("history", ""), {}, param="history"
    )
    return {"history": record.describe_all(pager["rows"]), "history_pager": pager}


@login_required
@require_GET
def version_download(request: HttpRequest, deployment_id: int, number: int) -> HttpResponse:
    """The version's package file, exactly as uploaded (its sha256 in the headers)."""
    deployment = get_deployment_for_user(request, deployment_id, "download")
    version = get_object_or_404(deployment.versions, number=number)
    try:
        return stream_package(version)
    except StorageError as exc:
        return HttpResponse(str(exc), status=503, content_type="text/plain")


def roles_context(request: HttpRequest, deployment: Deployment) -> dict:
    """The champion, its challenger, how they compare by day, and the changes of champion."""
    changes = list(changes_of(deployment)[:20])
    waiting = next((c for c in changes if c.status == ChampionChange.Status.WAITING), None)
    champion = deployment.champion
    compared = list(comparisons_of(deployment)[:90])
    return {
        "champion": champion,
        "challenger": deployment.challenger,
        "share": roles.split_share(deployment),
        "comparisons": compared,
        "chart": [{"date": c.date.isoformat(), **c.metrics} for c in reversed(compared)],
        "changes": changes,
        "waiting": waiting,
        "approvers": roles.approvers(waiting) if waiting else [],
        "can_approve": bool(
            waiting and owners.may_approve(request.user, deployment, waiting.requested_by_id)
        ),
        "can_withdraw": bool(
            waiting
            and (
                waiting.requested_by_id == request.user.id
                or owners.may_approve(request.user, deployment, waiting.requested_by_id)
            )
        ),
        "earlier": [  # what a rollback may go to: any other valid version but the challenger
            v
            for v in deployment.versions.all()
            if champion
            and v.state == PackageVersion.State.VALID
            and v.id not in (champion.id, deployment.challenger_id)
        ],
    }


def ground_truth_context(deployment: Deployment, version: PackageVersion | None) -> dict:
    """The model's Gini on matured targets, and why there is none when something is wrong."""
    package = version.package if version else {}
    target = params.value(package.get("params"), "target")
    if not target:
        return {}
    matured = deployment.runs.filter(performance__isnull=False, role=Role.CHAMPION).order_by(
        "-date"
    )
    latest = matured.first()
    message = ""
    if not settings.LABELS_URI:
        message = (
            "No ground truth is configured on this site (LABELS_URI): its Gini cannot be measured."
        )
    elif latest is not None and latest.performance.get("error"):
        message = f"Run of {latest.date}: {latest.performance['error']}."
    return {
        "target": target,
        "lag": params.value(package.get("params"), "label_lag_days"),
        "expected": ground_truth.gini_lines(package)["expected_gini"],
        "history": ground_truth.history(deployment),
        "latest": matured.exclude(performance__has_key="error").first(),
        "message": message,
    }


def next_runs_or_none(deployment: Deployment) -> list[datetime]:
    if deployment.status != Deployment.Status.ACTIVE:
        return []
    return schedules.next_runs(deployment.schedule, deployment.timezone, timezone.now(), 5)


@login_required
@require_POST
def model_action(request: HttpRequest, deployment_id: int, action: str) -> HttpResponse:
    deployment = get_deployment_for_user(request, deployment_id)
    if action not in owners.ACTIONS:
        return HttpResponse(status=404)
    if action not in ("approve", "withdraw"):  # the asker's and the approvers': roles says
        allow(request.user, deployment, action)
    try:
        if action == "pause":
            deployments.update(deployment, status=Deployment.Status.PAUSED)
            messages.success(
                request, f"{deployment.name} is paused: it will not be scored until resumed."
            )
        elif action == "resume":
            deployments.update(deployment, status=Deployment.Status.ACTIVE)
            messages.success(request, f"{deployment.name} is active again.")
        elif action == "score":
            run = dispatch.score_now(
                deployment, posted_date(request), bool(request.POST.get("allow_older_slice"))
            )
            waiting = f": {run.waiting_for}" if run.waiting_for else ""
            messages.success(request, f"Run {run.id} for {run.date} is {run.status}{waiting}.")
        elif action == "delete":
            deployments.delete(deployment)
            messages.success(request, f"{deployment.name} and its packages were deleted.")
            return redirect("models")
        elif action in ("promote", "rollback"):
            version = get_object_or_404(deployment.versions, number=request.POST.get("version"))
            change = roles.request_change(
                deployment, version, request.POST.get("reason"), request.user
            )
            messages.success(request, change_message(change))
        elif action == "share":
            deployment = roles.change_share(
                deployment, request.POST.get("share"), request.POST.get("reason")
            )
            messages.success(request, share_message(deployment))
        elif action == "approve":
            change = get_object_or_404(deployment.champion_changes, id=request.POST.get("change"))
            change = roles.approve(change, request.user)
            messages.success(request, change_message(change))
        elif action == "withdraw":
            change = get_object_or_404(deployment.champion_changes, id=request.POST.get("change"))
            change = roles.withdraw(change, request.user)
            messages.success(
                request, f"The {change.kind} to v{change.version.number} was withdrawn."
            )
        elif action == "hand_over":
            team = handover.team_named(request.user, request.POST.get("team"))
            deployment = handover.hand_over(
                deployment, team, request.POST.get("reason"), request.user
            )
            messages.success(
                request,
                f"{deployment.name} is the team {team.name}'s now; its packages moved to "
                "the team's folder.",
            )
            return redirect(hand_over_next(request, deployment))
        elif action == "settings":
            deployments.update(
                deployment,
                email=request.POST.get("email"),
                schedule=posted_schedule(request),
                timezone=request.POST.get("timezone"),
                # Emptied: the package's again; a form without the field leaves it.
                max_slice_age_days=request.POST.get("max_slice_age_days", deployments.UNCHANGED),
            )
            messages.success(request, "Settings saved.")
        else:
            return HttpResponse(status=404)
    except (DeployError, StorageError, RunError, roles.RoleError) as exc:
        messages.error(request, str(exc))
    except handover.HandOverNotAllowed as exc:
        raise PermissionDenied(str(exc)) from None
    except handover.HandOverError as exc:
        messages.error(request, str(exc))
    return redirect("model", deployment_id=deployment.id)


def hand_over_next(request: HttpRequest, deployment: Deployment) -> str:
    """Back to the page the hand-over came from (the staff's list of departed people's
    models), else the model's page."""
    if request.POST.get("next") == "departed" and request.user.is_staff:
        return reverse("departed")
    return reverse("model", args=[deployment.id])


def change_message(change: ChampionChange) -> str:
    if change.status == ChampionChange.Status.WAITING:
        who = ", ".join(roles.approvers(change)) or f"a member of {settings.APPROVERS_GROUP}"
        return f"The {change.kind} to v{change.version.number} is waiting for approval by {who}."
    return f"v{change.version.number} is the champion from the next run on."


def share_message(deployment: Deployment) -> str:
    version, share = deployment.challenger.number, deployment.challenger_share
    if share is None:
        return f"From the next run on v{version} is a shadow: it scores every entity."
    return (
        f"From the next run on v{version} scores {share:g} of the entities, the champion the rest."
    )


@login_required
@require_GET
def run_scores(request: HttpRequest, run_id: int, kind: str) -> HttpResponse:
    run = get_object_or_404(runs_for(request.user), id=run_id, status=ScoringRun.Status.SUCCEEDED)
    if kind not in ("csv", "parquet"):
        return HttpResponse(status=404)
    return stream_scores(run, kind)


@login_required
@require_GET
def schedule_preview(request: HttpRequest) -> JsonResponse:
    """The next fire times of a schedule, for the live preview under the form."""
    try:
        zone = schedules.check_timezone(request.GET.get("timezone") or "UTC")
        schedule = schedules.check_schedule(request.GET.get("schedule", ""), zone)
    except schedules.ScheduleError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    fire_times = schedules.next_runs(schedule, zone, timezone.now(), 3)
    return JsonResponse(
        {"schedule": schedules.describe(schedule), "next_runs": [t.isoformat() for t in fire_times]}
    )


@login_required
def token_page(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        # Deleting the row revokes the key at once: TokenAuthentication looks it up per request.
        revoked, _ = Token.objects.filter(user=request.user).delete()
        if "revoke" in request.POST:
            if revoked:
                messages.success(request, "Your token was revoked: it no longer works.")
            else:
                messages.error(request, "You have no token to revoke.")
            return redirect("token")
        Token.objects.create(user=request.user)
        messages.success(request, "A new token was made; the old one no longer works.")
        return redirect("token")
    token = Token.objects.filter(user=request.user).first()
    return render(
        request,
        "portal/token.html",
        {"token": token, "history": tokens.token_history(request.user)},
    )


@login_required
def help_page(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "portal/help.html",
        {
            "base_url": request.build_absolute_uri("/"),
            "require_approval": settings.REQUIRE_APPROVAL,
            "role_table": owners.table(),
            "approvers_group": settings.APPROVERS_GROUP,
        },
    )
