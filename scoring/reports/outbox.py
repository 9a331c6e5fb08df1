"""The database send queue of emails (reports, failure emails): each goes out once.

A row is a `scoring.models.QueuedEmail`. A sender claims it for one attempt with a
conditional update, so a worker sending it at once and tick never both send it; a mail
server that is down or slow only delays it: tick tries again, backing off, up to
MAX_SEND_ATTEMPTS times. Several rows may go out as one email (`send_together`): they are
claimed, sent and marked together.
"""

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from django.core.mail import EmailMessage
from django.db import transaction
from django.db.models import F, Q, QuerySet

from scoring.models import QueuedEmail

log = logging.getLogger(__name__)

MAX_SEND_ATTEMPTS = 10
DUE_PER_PASS = 100

# The email of a row, or None when there is no one to send it to (the row counts as sent).
MessageFor = Callable[[QueuedEmail], EmailMessage | None]
# The one email of several rows, or None when there is no one to send it to.
MessageForAll = Callable[[list[QueuedEmail]], EmailMessage | None]


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


def claim_all(rows: QuerySet, now: datetime) -> list[QueuedEmail]:
    """Take every due row of `rows` for one attempt, as `claim` takes one.

    Rows another sender is claiming at this moment are skipped, never waited for: that
    sender sends them. The lease is the backoff of the most tried row.

    The group's first due row is its lock: of two senders scanning the group at once, each
    would otherwise lock the rows it reached first (SKIP LOCKED) and the group would go out
    as two emails. The one that holds the first row takes them all; the other takes none.
    """
    with transaction.atomic():
        first = rows.filter(due(now)).order_by("id").values_list("id", flat=True)[:1]
        if not rows.model.objects.filter(id__in=list(first)).select_for_update(skip_locked=True):
            return []
        claimed = list(rows.filter(due(now)).select_for_update(of=("self",)).order_by("id"))
        if claimed:
            attempts = max(row.send_attempts for row in claimed)
            next_attempt_at = now + retry_delay(attempts + 1)
            rows.model.objects.filter(id__in=[row.id for row in claimed]).update(
                next_attempt_at=next_attempt_at
            )
            for row in claimed:
                row.next_attempt_at = next_attempt_at
    return claimed


def send(row: QueuedEmail, now: datetime, message_for: MessageFor) -> bool:
    """Email the row: True when it went out, or there was no one to send it to.

    Never raises: a mail server that is down must not fail what sends it. The row then stays
    unsent with the error, and tick tries again later. False too when the row was sent
    already, is being sent by another process, or is not due yet.
    """
    if not claim(row, now):
        return False
    return deliver([row], now, lambda: message_for(row))


def send_together(rows: QuerySet, now: datetime, message_for_all: MessageForAll) -> int:
    """Email the due rows of `rows` as one message; how many rows it covered (0: none went)."""
    claimed = claim_all(rows, now)
    if not claimed:
        return 0
    return len(claimed) if deliver(claimed, now, lambda: message_for_all(claimed)) else 0


def deliver(rows: list[QueuedEmail], now: datetime, message: Callable) -> bool:
    """Build and send the claimed rows' email, then mark them sent; on an error, keep it."""
    model = type(rows[0])
    ids = [row.id for row in rows]
    try:
        email = message()
        if email is None:
            log.warning("%s: no email address, nothing to send", rows[0])
        else:
            email.send()
    except Exception as exc:
        record_failure(model, ids, f"{type(exc).__name__}: {exc}")
        return False
    model.objects.filter(id__in=ids).update(sent_at=now, send_error="")
    for row in rows:
        row.sent_at, row.send_error = now, ""
    return True


def record_failure(model: type[QueuedEmail], ids: list[int], error: str) -> None:
    model.objects.filter(id__in=ids).update(send_attempts=F("send_attempts") + 1, send_error=error)
    gone = model.objects.filter(id__in=ids, send_attempts__gte=MAX_SEND_ATTEMPTS).count()
    if gone:
        log.error(
            "%s %s: gave up after %s attempts: %s", gone, model.__name__, MAX_SEND_ATTEMPTS, error
        )
    else:
        log.warning("%s %s not sent: %s", len(ids), model.__name__, error)


def send_due(rows: QuerySet, now: datetime, message_for: MessageFor) -> int:
    """Send the due emails of `rows`, oldest first; returns how many went."""
    due_rows = rows.filter(due(now)).order_by("created_at")[:DUE_PER_PASS]
    return sum(send(row, now, message_for) for row in due_rows)
