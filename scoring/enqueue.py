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


def validate_version(version_id: int) -> None:
    current_app.send_task(VALIDATE_VERSION, args=[version_id])


def run_batch(batch_id: int) -> None:
    current_app.send_task(RUN_BATCH, args=[batch_id])


def score_parts(part_ids: list[int]) -> None:
    """One task per part of a slice (a group): any free worker takes one."""
    group(current_app.signature(SCORE_PART, args=[part_id]) for part_id in part_ids).apply_async()


def send_notifications(countdown: float = 0) -> None:
    """A nudge, not the record: without retries, as tick sends whatever it does not. The
    countdown is seconds, far below the broker's visibility timeout."""
    current_app.send_task(SEND_NOTIFICATIONS, retry=False, countdown=countdown)
