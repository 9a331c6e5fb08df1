"""Work sent to the Celery workers, by task name.

Domain code names the task it wants run; it never imports scoring.tasks, which imports
the domain (that would be a cycle). The names are those beat's schedule and messages
already queued carry: they never change.
"""

from celery import current_app, group

VALIDATE_VERSION = "scoring.tasks.validate_version"
RUN_BATCH = "scoring.tasks.run_batch"
SCORE_PART = "scoring.tasks.score_part"
SEND_NOTIFICATIONS = "scoring.tasks.send_notifications"
# Redis priorities, 0 first (kombu's steps: 0, 3, 6, 9). Beat's tick and the notifications
# go at 0, Celery's default: a thousand uploads' validations, or a fleet's units, queued
# before a tick no longer hold it past its expiry, and with it every schedule.
SCORING = 3
VALIDATION = 6


def validate_version(version_id: int) -> None:
    current_app.send_task(VALIDATE_VERSION, args=[version_id], priority=VALIDATION)


def run_batch(batch_id: int) -> None:
    current_app.send_task(RUN_BATCH, args=[batch_id], priority=SCORING)


def score_parts(part_ids: list[int]) -> None:
    """One task per part of a slice (a group): any free worker takes one."""
    group(
        current_app.signature(SCORE_PART, args=[part_id], priority=SCORING) for part_id in part_ids
    ).apply_async()


def send_notifications(countdown: float = 0) -> None:
    """A nudge, not the record: without retries, as tick sends whatever it does not. The
    countdown is seconds, far below the broker's visibility timeout."""
    current_app.send_task(SEND_NOTIFICATIONS, retry=False, countdown=countdown)
