"""Failure and give-up emails, through the database send queue reports use.

`queue` only writes the email's row, in the transaction that records the failure, so a
slow mail server never holds up a batch (nor tick, which gives up on stale runs). Once
that is committed a worker is asked to send it at once; whatever the mail server did not
take, tick sends again, backing off (scoring.reports.outbox). One failed attempt makes one
email: a unique constraint.
"""

import logging
from datetime import datetime

from django.core.mail import EmailMultiAlternatives
from django.db import transaction

from scoring import enqueue
from scoring.models import Notification, ScoringRun
from scoring.reports import mail, outbox

log = logging.getLogger(__name__)


def queue(run: ScoringRun) -> None:
    """Put the email about the run's failed attempt in the queue, to send once committed."""
    Notification.objects.get_or_create(
        run=run,
        attempt=run.attempts,
        started_at=run.started_at,
        defaults={
            "gave_up": run.status == ScoringRun.Status.FAILED,
            "error": run.error,
            "slice_date": run.slice_date,
            "retry_at": run.next_attempt_at,
        },
    )
    transaction.on_commit(send_soon)


def send_soon() -> None:
    """Ask a worker to send the queue now: the batch goes on without waiting for it."""
    try:
        enqueue.send_notifications()
    except Exception:  # the broker is down: tick sends the email
        log.exception("could not ask a worker to send the failure emails; tick will")


def send_due(now: datetime) -> int:
    """Send the failure emails that are due (new, or whose back-off is over); how many went."""
    rows = Notification.objects.select_related("run__deployment", "run__version")
    return outbox.send_due(rows, now, failure_email)


def failure_email(notification: Notification) -> EmailMultiAlternatives | None:
    """Which model, which slice, what went wrong, what happens next; None without an address."""
    run = as_it_failed(notification)
    if not run.deployment.email:
        return None
    context = {"run": run, "deployment": run.deployment, "gave_up": notification.gave_up}
    return mail.make_message("run_failed", run.deployment.email, context)


def as_it_failed(notification: Notification) -> ScoringRun:
    """The run as it was when this attempt failed (never saved): by the time the email goes
    out, the next attempt may have begun, with another error."""
    run = notification.run
    run.attempts, run.error = notification.attempt, notification.error
    run.slice_date, run.next_attempt_at = notification.slice_date, notification.retry_at
    return run
