"""Thin Celery tasks: they take ids and call the domain's modules.

Their names are in beat's schedule and in queued messages, so they never change; code
that sends one names it (scoring.enqueue) instead of importing this module.
"""

import logging
from datetime import timedelta

import redis
from celery import shared_task
from celery.signals import task_postrun, task_prerun, worker_process_init
from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.utils import timezone

from scoring import enqueue, redis_keys
from scoring.engine import (
    batch,
    environments,
    maintenance,
    memory,
    parts,
    scores,
    sources,
    validation,
    waiting,
)
from scoring.engine.spark import session as spark_session
from scoring.models import stale_validations
from scoring.online import skew
from scoring.packages.storage import StorageError
from scoring.quality import ground_truth
from scoring.reports import mail, matured
from scoring.runs import dispatch, notifications
from scoring.sandbox import spawn

log = logging.getLogger(__name__)
# A validation still pending after this long lost its message (Redis restart, dead worker).
REQUEUE_AFTER = timedelta(minutes=5)


@worker_process_init.connect
def start_sandbox_zygote(**_) -> None:
    """Import the packages' libraries once per worker process, before the first batch; with
    ENGINE=spark, start its Spark session (a JVM) too, for the same reason. Both run before
    the process takes a task, while it has no other thread: the JVM starts from an environment
    scrubbed of the worker's secrets for that moment (spark.session), which no task may see."""
    spawn.zygote()
    if settings.ENGINE == "spark":
        spark_session.get()


@task_prerun.connect
def forget_content_types(**_) -> None:
    """The record of changes names each model by its content type, whose ids a process
    caches: a database restored (or a test's flushed) under a running worker renumbers them."""
    ContentType.objects.clear_cache()


@task_postrun.connect
def give_back_memory(sender=None, **_) -> None:
    """A batch or a unit of one freed what it held: the worker's peak stays its largest unit's."""
    if sender is not None and sender.name in (run_batch.name, score_part.name):
        memory.give_back()


@shared_task(autoretry_for=(StorageError,), retry_backoff=5, max_retries=10)
def validate_version(version_id: int) -> None:
    validation.validate_version(version_id)


@shared_task
def run_batch(batch_id: int) -> None:
    batch.run_batch(batch_id)


@shared_task(bind=True)
def score_part(self, part_id: int) -> None:
    parts.score_part(part_id, self.request.hostname or "")


@shared_task
def send_notifications() -> None:
    """Failure emails, sent as soon as their runs' failures are committed."""
    notifications.send_due(timezone.now())


@shared_task
def tick() -> None:
    """Runs every minute (Celery beat): the database, not the broker, says what is due."""
    now = timezone.now()
    redis.Redis.from_url(settings.REDIS_URL).set(redis_keys.last_tick(), now.isoformat())
    for version in stale_validations(now - REQUEUE_AFTER):
        version.validation_queued_at = now
        version.save(update_fields=["validation_queued_at"])
        enqueue.validate_version(version.id)
    dispatch.tick(now)
    waiting.recheck(now)
    mail.send_due_reports(now)
    matured.send_due(now)
    notifications.send_due(now)


@shared_task
def maintain_scores_table() -> None:
    """Daily (beat, SCORES_MAINTENANCE_CRON): deleted models' scores past their retention
    removed, compaction, vacuum, checkpoint, log clean-up."""
    maintenance.maintain()


@shared_task
def check_online_traffic() -> None:
    """Daily (beat, ONLINE_CHECK_CRON): yesterday's answers of every online model against
    its batch run (training-serving skew), each model alone."""
    skew.check_online_models(skew.yesterday())


@shared_task
def remove_unused_environments() -> None:
    """Daily (beat, SANDBOX_ENVIRONMENTS_CLEANUP_CRON): environments of pinned libraries
    unused for long, or beyond the limits, go; never one a zygote runs from."""
    removed = environments.remove_unused()
    if removed:
        log.info("removed %d unused sandbox environments: %s", len(removed), ", ".join(removed))


@shared_task
def check_ground_truth() -> None:
    """Hourly (beat): the Gini, KS and calibration of runs whose outcomes matured."""
    ground_truth.check_matured(
        timezone.now(), sources.labels(), scores.run_scores, matured.announce
    )
