"""Emails to model owners: one function per kind, three templates per kind.

`templates/email/<kind>_subject.txt`, `<kind>.txt` and `<kind>.html`.
"""

import logging

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.template.loader import render_to_string

log = logging.getLogger(__name__)


def make_message(kind: str, to: str, context: dict) -> EmailMultiAlternatives:
    context = {**context, "site_url": settings.SITE_URL.rstrip("/")}
    subject = " ".join(render_to_string(f"email/{kind}_subject.txt", context).split())
    message = EmailMultiAlternatives(
        subject, render_to_string(f"email/{kind}.txt", context), to=[to]
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
        "gave_up": run.status == run.FAILED,
    }
    make_message("run_failed", deployment.email, context).send()
