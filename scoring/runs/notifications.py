"""Failure and give-up emails, through the database send queue reports use.

`queue` only writes a row per failed attempt, in the transaction that records the failure,
so a slow mail server never holds up a batch (nor tick, which gives up on stale runs). The
rows are the record; the emails are fewer: each address gets one email for the failures of
one batch at one moment. A failure waits FAILURE_EMAIL_GATHER_SECONDS for the others of its
moment (a feature source that is down fails a whole batch within seconds), then a sender
claims all due rows of that address and batch at once and sends them as one email
(scoring.runs.failure_emails). A retry runs in another batch: its failure is another email.
Whatever the mail server did not take, tick sends again, backing off
(scoring.reports.outbox). One failed attempt makes one row: a unique constraint.

The address is the model's, else its team's (scoring.reports.recipients). A team's model
with neither is told to each of the team's people, one row each, so that each of them
still gets one email a batch: their own models' failures with their teams'.
"""

import logging
import time
from datetime import datetime, timedelta

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import transaction

from scoring import enqueue
from scoring.models import Notification, ScoringRun
from scoring.reports import mail, outbox, recipients
from scoring.runs import failure_emails

log = logging.getLogger(__name__)

# A nudge fires a second after the gathering time: it covers the failures committed within
# that second, so a thousand failures of one moment send a few nudges, not a thousand.
NUDGE_COVERS_SECONDS = 1.0
_last_nudge = -NUDGE_COVERS_SECONDS


def queue(run: ScoringRun) -> None:
    """Put the email about the run's failed attempt in the queue, to send once committed:
    for the model's address, or for each of its team's people when it has none
    (scoring.reports.recipients), as they are at the moment it failed."""
    for address in recipients.people_addresses(run.deployment) or [""]:
        Notification.objects.get_or_create(
            run=run,
            attempt=run.attempts,
            started_at=run.started_at,
            address=address,
            defaults={
                "batch_id": run.batch_id,
                "gave_up": run.status == ScoringRun.Status.FAILED,
                "error": run.error,
                "slice_date": run.slice_date,
                "retry_at": run.next_attempt_at,
            },
        )
    transaction.on_commit(send_soon)


def send_soon() -> None:
    """Ask a worker to send once the failure's moment is gathered: the batch goes on."""
    global _last_nudge
    if time.monotonic() - _last_nudge < NUDGE_COVERS_SECONDS:
        return  # the last nudge fires late enough to gather this failure too
    try:
        enqueue.send_notifications(countdown=settings.FAILURE_EMAIL_GATHER_SECONDS + 1)
        _last_nudge = time.monotonic()
    except Exception:  # the broker is down: tick sends the email
        log.exception("could not ask a worker to send the failure emails; tick will")


def send_due(now: datetime) -> int:
    """Email each address and batch whose oldest due failure has waited its gathering time,
    all their due failures at once; returns how many failed attempts were told."""
    gathered = now - timedelta(seconds=settings.FAILURE_EMAIL_GATHER_SECONDS)
    due = Notification.objects.filter(outbox.due(now)).annotate(to=recipients.failure_address())
    moments = (
        due.filter(created_at__lte=gathered)
        .order_by("to", "batch_id")
        .values_list("to", "batch_id")
        .distinct()[: outbox.DUE_PER_PASS]
    )
    return sum(send_to(address, batch_id, now) for address, batch_id in moments)


def send_to(address: str, batch_id: int | None, now: datetime) -> int:
    rows = (
        Notification.objects.annotate(to=recipients.failure_address())
        .filter(to=address, batch_id=batch_id)
        .select_related("run__deployment", "run__version")
    )
    return outbox.send_together(rows, now, lambda claimed: failure_email(address, claimed))


def failure_email(address: str, notifications: list[Notification]) -> EmailMultiAlternatives | None:
    """One failed attempt as it was (`run_failed`), or several grouped by error
    (`runs_failed`); None without an address."""
    if not address:
        return None
    if len(notifications) == 1:
        [notification] = notifications
        run = as_it_failed(notification)
        context = {
            "run": run,
            "deployment": run.deployment,
            "gave_up": notification.gave_up,
            "lost_attempts": failure_emails.Failure.of(notification).lost_attempts,
        }
        return mail.make_message("run_failed", address, context)
    context = failure_emails.digest_context(notifications)
    return mail.make_message("runs_failed", address, context)


def as_it_failed(notification: Notification) -> ScoringRun:
    """The run as it was when this attempt failed (never saved): by the time the email goes
    out, the next attempt may have begun, with another error."""
    run = notification.run
    run.attempts, run.error = notification.attempt, notification.error
    run.slice_date, run.next_attempt_at = notification.slice_date, notification.retry_at
    run.started_at = notification.started_at
    return run
