"""The database send queue of emails (reports, failure emails): each goes out once.

A row is a `scoring.models.QueuedEmail`. A sender claims it for one attempt with a
conditional update, so a worker sending it at once and tick never both send it; a mail
server that is down or slow only delays it: tick tries again, backing off, up to
MAX_SEND_ATTEMPTS times.
"""

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from django.core.mail import EmailMessage
from django.db.models import F, Q, QuerySet

from scoring.models import QueuedEmail

log = logging.getLogger(__name__)

MAX_SEND_ATTEMPTS = 10
DUE_PER_PASS = 100

# The email of a row, or None when there is no one to send it to (the row counts as sent).
MessageFor = Callable[[QueuedEmail], EmailMessage | None]


def retry_delay(attempts: int) -> timedelta:
    return timedelta(minutes=min(2**attempts, 60))


def due(now: datetime) -> Q:
    return Q(sent_at__isnull=True, send_attempts__lt=MAX_SEND_ATTEMPTS) & (
        Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
    )


def claim(row: QueuedEmail, now: datetime) -> bool:
    """Take the row for one attempt, so no other sender sends it meanwhile.

    The conditional update moves `next_attempt_at` past `now`: the retry time if this attempt
    fails, and a lease if this process dies while sending.
    """
    row.refresh_from_db(fields=["sent_at", "send_attempts", "next_attempt_at"])
    next_attempt_at = now + retry_delay(row.send_attempts + 1)
    claimed = (
        type(row)
        .objects.filter(due(now), id=row.id, send_attempts=row.send_attempts)
        .update(next_attempt_at=next_attempt_at)
    )
    if claimed:
        row.next_attempt_at = next_attempt_at
    return bool(claimed)


def send(row: QueuedEmail, now: datetime, message_for: MessageFor) -> bool:
    """Email the row: True when it went out, or there was no one to send it to.

    Never raises: a mail server that is down must not fail what sends it. The row then stays
    unsent with the error, and tick tries again later. False too when the row was sent
    already, is being sent by another process, or is not due yet.
    """
    if not claim(row, now):
        return False
    try:
        message = message_for(row)
        if message is None:
            log.warning("%s: no email address, nothing to send", row)
        else:
            message.send()
    except Exception as exc:
        record_failure(row, f"{type(exc).__name__}: {exc}")
        return False
    type(row).objects.filter(id=row.id).update(sent_at=now, send_error="")
    row.sent_at, row.send_error = now, ""
    return True


def record_failure(row: QueuedEmail, error: str) -> None:
    type(row).objects.filter(id=row.id).update(
        send_attempts=F("send_attempts") + 1, send_error=error
    )
    row.refresh_from_db(fields=["send_attempts", "send_error"])
    if row.send_attempts >= MAX_SEND_ATTEMPTS:
        log.error("%s: gave up after %s attempts: %s", row, row.send_attempts, error)
    else:
        log.warning("%s not sent (attempt %s): %s", row, row.send_attempts, error)


def send_due(rows: QuerySet, now: datetime, message_for: MessageFor) -> int:
    """Send the due emails of `rows`, oldest first; returns how many went."""
    due_rows = rows.filter(due(now)).order_by("created_at")[:DUE_PER_PASS]
    return sum(send(row, now, message_for) for row in due_rows)
