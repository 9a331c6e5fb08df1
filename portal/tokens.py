"""API tokens made and revoked, in the record of changes: by the token page, the admin or
any other way (signals of DRF's Token model)."""

from auditlog.models import LogEntry
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from rest_framework.authtoken.models import Token

from scoring import record

FIELD = "API token"
SHOWN = 10


def token_history(user) -> list[dict]:
    """The user's latest tokens made and revoked, newest first, as the record tells them."""
    entries = LogEntry.objects.get_for_object(user).filter(changes__has_key=FIELD)
    return record.describe_all(entries.select_related("actor")[:SHOWN])


@receiver(post_save, sender=Token)
def token_made(sender, instance: Token, created: bool, **_) -> None:
    if created:
        record.log_update(instance.user, {FIELD: ("none", "made")})


@receiver(post_delete, sender=Token)
def token_revoked(sender, instance: Token, **_) -> None:
    record.log_update(instance.user, {FIELD: ("made", "revoked")})
