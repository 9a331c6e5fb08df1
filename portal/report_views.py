"""The report of a batch as a page: the same as the email, with its charts served as PNGs."""

from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from scoring.models import Report
from scoring.packages import owners
from scoring.quality.levels import SEVERITY
from scoring.reports import chart, content


def visible(user) -> Q:
    """The reports a user may see: their own and their teams' (all of them for staff)."""
    if user.is_staff:
        return Q()
    return Q(owner=user) | Q(team__in=list(owners.team_roles(user)))


def reports_for(user):
    return Report.objects.select_related("owner", "team", "batch").filter(visible(user))


def get_report_for_user(request: HttpRequest, report_id: int) -> Report:
    """The report, or 404 when it is not the user's: no view can forget ownership."""
    return get_object_or_404(reports_for(request.user), id=report_id)


@login_required
@require_GET
def report_page(request: HttpRequest, report_id: int) -> HttpResponse:
    report = get_report_for_user(request, report_id)
    status = request.GET.get("status", "")
    page = request.GET.get("page", "1")
    if status and status not in SEVERITY:
        return HttpResponseBadRequest(f"status must be one of {', '.join(SEVERITY)}, or blank")
    if not page.isdigit() or int(page) < 1:
        return HttpResponseBadRequest("page must be a whole number from 1")
    context = content.page_context(report, status or None, int(page))
    return render(request, "portal/report.html", context)


@login_required
@require_GET
def report_chart(request: HttpRequest, report_id: int, run_id: int) -> HttpResponse:
    report = get_report_for_user(request, report_id)
    run = get_object_or_404(report.runs.all(), id=run_id)
    if not content.has_histogram(run.quality):
        raise Http404("this run has no score distribution")
    response = HttpResponse(chart.score_chart_png(run.quality), content_type="image/png")
    # A run's quality is computed once, after it commits: the chart does not change.
    response["Cache-Control"] = "private, max-age=86400"
    return response
