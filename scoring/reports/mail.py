"""Emails to model owners: one function per kind, three templates per kind.

`templates/email/<kind>_subject.txt`, `<kind>.txt` and `<kind>.html`. Reports go through
the database send queue (scoring.reports.outbox): sent once, and a mail server that is
down only delays them.
"""

import logging
from datetime import datetime
from email.mime.image import MIMEImage

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.template.loader import render_to_string
from django.utils import timezone

from scoring.models import Report
from scoring.reports import outbox, recipients
from scoring.reports.chart import score_chart_png
from scoring.reports.content import report_context

log = logging.getLogger(__name__)


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


def report_email(report: Report) -> EmailMultiAlternatives | None:
    """The report's email, or None when it has no address (scoring.reports.recipients)."""
    to = recipients.report_addresses(report)
    return report_message(report, to) if to else None


def send_report(report: Report, now: datetime | None = None) -> bool:
    """Email the report once: True when it went out, or there was no address to send it to.

    Never raises: a mail server that is down must not fail the batch; tick sends it later.
    """
    return outbox.send(report, now or timezone.now(), report_email)


def send_due_reports(now: datetime) -> int:
    """For tick: send the reports a mail server did not take, backing off; returns how many went."""
    return outbox.send_due(Report.objects.select_related("owner", "team"), now, report_email)
