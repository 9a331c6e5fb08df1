"""Staff's list of the models of people who left: a person's own models stay theirs, and
keep scoring on their schedules, until staff hand each over to a team
(scoring.packages.handover). A person leaves when their account is deactivated (the admin,
or a directory sync that does so); their teams' models are the teams' and never listed.
"""

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Prefetch
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from portal import dashboard
from scoring.models import Deployment, PackageVersion, Team


def departed_models():
    """Every own model of an inactive person, by owner and name."""
    return (
        Deployment.objects.filter(team__isnull=True, owner__is_active=False)
        .select_related("owner", "champion")
        .prefetch_related(Prefetch("versions", queryset=PackageVersion.objects.order_by("-number")))
        .order_by("owner__username", "name")
    )


@login_required
@require_GET
def departed_page(request: HttpRequest) -> HttpResponse:
    if not request.user.is_staff:
        raise PermissionDenied("only staff see the models of people who left")
    models = dashboard.attach_last_runs(list(dashboard.with_last_runs(departed_models())))
    return render(
        request, "portal/departed.html", {"models": models, "teams": list(Team.objects.all())}
    )
