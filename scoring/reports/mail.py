"""Emails to model owners: one function per kind, three templates per kind.

`templates/email/<kind>_subject.txt`, `<kind>.txt` and `<kind>.html`. A report is sent
once: a sender claims it with a conditional update, and a mail server that is down only
delays it (tick sends it again, backing off).
"""

import logging
from datetime import datetime, timedelta
from email.mime.image import MIMEImage

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db.models import F, Q
from django.template.loader import render_to_string
from django.utils import timezone

from scoring.models import Report
from scoring.reports.chart import score_chart_png
from scoring.reports.content import report_context

log = logging.getLogger(__name__)

MAX_SEND_ATTEMPTS = 10
DUE_REPORTS_PER_TICK = 100


def make_message(kind: str, to: str | list[str], context: dict) -> EmailMultiAlternatives:
    context = {**context, "site_url": settings.SITE_URL.rstrip("/")}
    subject = " ".join(render_to_string(f"email/{kind}_subject.txt", context).split())
    message = EmailMultiAlternatives(
        subject,
        render_to_string(f"email/{kind}.txt", context),
        to=[to] if isinstance(to, str) else list(to),
    )
    message.attach_alternative(render_to_string(f"email/{kind}.html", context), "text/html")
    return message


def send_run_failed(run) -> None:
    """Tell the owner at once: which model, which slice, what went wrong, what happens next."""
    deployment = run.deployment
    if not deployment.email:
        log.warning("run %s failed but %s has no report email", run.id, deployment)
        return
    context = {
        "run": run,
        "deployment": deployment,
        "gave_up": run.status == run.Status.FAILED,
    }
    make_message("run_failed", deployment.email, context).send()


def recipients(report: Report) -> list[str]:
    """The report emails of the report's models; the owner's account email when none has one."""
    emails = {run.deployment.email for run in report.runs.select_related("deployment")}
    emails.discard("")
    if not emails and report.owner.email:
        emails = {report.owner.email}
    return sorted(emails)


def report_message(report: Report, to: list[str]) -> EmailMultiAlternatives:
    context = report_context(report)
    charts = []
    for section in context["sections"]:
        if section.has_chart:
            try:
                charts.append((section.content_id, score_chart_png(section.run.quality)))
            except Exception:
                # A bad histogram costs the chart, not the email.
                log.exception("no chart for run %s in report %s", section.run.id, report.id)
                section.has_chart = False
    message = make_message("report", to, context)
    if charts:
        # multipart/related: the HTML shows the images by Content-ID instead of listing them.
        message.mixed_subtype = "related"
    for content_id, png in charts:
        image = MIMEImage(png, "png")
        image.add_header("Content-ID", f"<{content_id}>")
        image.add_header(
            "Content-Disposition", "inline", filename=content_id.split("@")[0] + ".png"
        )
        message.attach(image)
    return message


def retry_delay(attempts: int) -> timedelta:
    return timedelta(minutes=min(2**attempts, 60))


def due(now: datetime) -> Q:
    return Q(sent_at__isnull=True, send_attempts__lt=MAX_SEND_ATTEMPTS) & (
        Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
    )


def claim(report: Report, now: datetime) -> bool:
    """Take the report for one attempt, so the engine and tick never both send it.

    The conditional update moves `next_attempt_at` past `now`: the retry time if this attempt
    fails, and a lease if this process dies while sending.
    """
    report.refresh_from_db(fields=["sent_at", "send_attempts", "next_attempt_at"])
    next_attempt_at = now + retry_delay(report.send_attempts + 1)
    claimed = Report.objects.filter(
        due(now), id=report.id, send_attempts=report.send_attempts
    ).update(next_attempt_at=next_attempt_at)
    if claimed:
        report.next_attempt_at = next_attempt_at
    return bool(claimed)


def send_report(report: Report, now: datetime | None = None) -> bool:
    """Email the report: True when it went out, or there was no address to send it to.

    Never raises: a mail server that is down must not fail the run. The report then stays
    unsent with the error, and tick tries again later (`send_due_reports`). False too when
    the report was sent already, is being sent by another process, or is not due yet.
    """
    now = now or timezone.now()
    if not claim(report, now):
        return False
    try:
        to = recipients(report)
        if to:
            report_message(report, to).send()
        else:
            log.warning(
                "report %s: %s has no email address, nothing to send", report.id, report.owner
            )
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        Report.objects.filter(id=report.id).update(
            send_attempts=F("send_attempts") + 1, send_error=error
        )
        report.refresh_from_db(fields=["send_attempts", "send_error"])
        if report.send_attempts >= MAX_SEND_ATTEMPTS:
            log.error(
                "report %s: gave up after %s attempts: %s", report.id, report.send_attempts, error
            )
        else:
            log.warning(
                "report %s not sent (attempt %s): %s", report.id, report.send_attempts, error
            )
        return False
    Report.objects.filter(id=report.id).update(sent_at=now, send_error="")
    report.sent_at, report.send_error = now, ""
    return True


def send_due_reports(now: datetime) -> int:
    """For tick: send the reports a mail server did not take, backing off; returns how many went."""
    reports = Report.objects.filter(due(now)).select_related("owner").order_by("created_at")
    return sum(send_report(report, now) for report in reports[:DUE_REPORTS_PER_TICK])
