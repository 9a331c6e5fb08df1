"""The scores of deleted models: kept DELETED_SCORES_RETENTION_DAYS after the deletion (a
model deleted by mistake, an audit), then removed from the table by a Delta commit, the
first step of the daily maintenance (scoring.engine.maintenance); their online requests go
with them (scoring.engine.request_retention).

The commit only changes the log (scores.remove_models): readers holding an older snapshot
still read those files until vacuum deletes them, SCORES_RETENTION_HOURS later, and every
other partition is read whole throughout. The setting is read at each removal, so raising
or lowering it applies to models deleted before too.
"""

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from scoring.engine import request_retention, scores
from scoring.models import DeletedDeployment

log = logging.getLogger(__name__)


def expired(now: datetime):
    """Deleted models whose scores have outlived the retention and are still in the table."""
    cutoff = now - timedelta(days=settings.DELETED_SCORES_RETENTION_DAYS)
    return DeletedDeployment.objects.filter(deleted_at__lte=cutoff, scores_removed_at__isnull=True)


def remove_expired(now: datetime | None = None) -> list[int]:
    """Remove the partitions of every expired deleted model in one commit; their ids.

    A crash after the commit leaves them marked as not removed: the next removal commits
    nothing for them (their partitions are gone) and marks them."""
    now = now or timezone.now()
    ids = list(expired(now).values_list("deployment_id", flat=True))
    if not ids:
        return []
    files = scores.remove_models(ids) + request_retention.remove_models(ids)
    DeletedDeployment.objects.filter(deployment_id__in=ids).update(scores_removed_at=now)
    log.info("removed the scores of %s deleted models (%s files): %s", len(ids), files, ids)
    return ids
