"""What a failure email says: the attempts of one recipient's models that failed at one
moment, grouped by error, in a size that does not grow with the number of models.

A feature source that is down fails every model of a batch with the same error: the owner
reads that error once, with the first NAMED_PER_ERROR models named and a count of the rest,
not a thousand emails.
"""

from dataclasses import dataclass
from datetime import date, datetime

from scoring.models import Notification
from scoring.runs import worker_loss

NAMED_PER_ERROR = 25
ERRORS_SHOWN = 10
ERROR_CHARS = 600


@dataclass
class Failure:
    """One failed attempt as it was when it failed (the run may have moved on since)."""

    name: str
    deployment_id: int
    version: int
    date: date
    slice_date: date | None
    error: str
    attempt: int
    max_attempts: int
    gave_up: bool
    retry_at: datetime | None

    @classmethod
    def of(cls, notification: Notification) -> "Failure":
        run = notification.run
        return cls(
            name=run.deployment.name,
            deployment_id=run.deployment_id,
            version=run.version.number,
            date=run.date,
            slice_date=notification.slice_date,
            error=notification.error,
            attempt=notification.attempt,
            max_attempts=run.max_attempts,
            gave_up=notification.gave_up,
            retry_at=notification.retry_at,
        )

    @property
    def lost_attempts(self) -> str:
        """'1, 2 and 3': the attempts whose worker stopped answering, when that is why this
        one failed; '' otherwise."""
        lost = worker_loss.lost_attempts(self.error)
        return worker_loss.in_words(lost) if lost else ""

    @property
    def outcome(self) -> tuple:
        """The facts one line can say for several failures (the retry to the minute shown)."""
        retry = self.retry_at.replace(second=0, microsecond=0) if self.retry_at else None
        return (self.date, self.slice_date, self.attempt, self.max_attempts, self.gave_up, retry)


@dataclass
class ErrorGroup:
    """The failures that share one error."""

    error: str
    failures: list[Failure]

    @property
    def named(self) -> list[Failure]:
        return self.failures[:NAMED_PER_ERROR]

    @property
    def more(self) -> int:
        return max(len(self.failures) - NAMED_PER_ERROR, 0)

    @property
    def shared(self) -> Failure | None:
        """The first failure when all share date, slice, attempt and next step: one line says
        them for all; None when they differ and each model's line says its own."""
        first = self.failures[0]
        return first if all(f.outcome == first.outcome for f in self.failures) else None

    @property
    def worker_kept_dying(self) -> bool:
        """These models gave up because their worker stopped answering: not their data."""
        return any(failure.gave_up and failure.lost_attempts for failure in self.failures)

    @property
    def short_error(self) -> str:
        if len(self.error) <= ERROR_CHARS:
            return self.error
        return self.error[: ERROR_CHARS - 1] + "…"


def group_by_error(failures: list[Failure]) -> list[ErrorGroup]:
    """Errors shared by most models first; models by name within each."""
    by_error: dict[str, list[Failure]] = {}
    for failure in sorted(failures, key=lambda f: (f.name.lower(), f.date, f.attempt)):
        by_error.setdefault(failure.error, []).append(failure)
    groups = [ErrorGroup(error, found) for error, found in by_error.items()]
    return sorted(groups, key=lambda group: -len(group.failures))


def digest_context(notifications: list[Notification]) -> dict:
    """The context of the `runs_failed` email: counts, then the failures grouped by error."""
    failures = [Failure.of(notification) for notification in notifications]
    groups = group_by_error(failures)
    dates = sorted({failure.date for failure in failures})
    gave_up = sum(failure.gave_up for failure in failures)
    return {
        "failure_count": len(failures),
        "model_count": len({failure.deployment_id for failure in failures}),
        "gave_up_count": gave_up,
        "all_gave_up": gave_up == len(failures),
        "dates": dates[0].isoformat() if len(dates) == 1 else f"{dates[0]} to {dates[-1]}",
        "groups": groups[:ERRORS_SHOWN],
        "more_errors": len(groups[ERRORS_SHOWN:]),
        "more_error_failures": sum(len(group.failures) for group in groups[ERRORS_SHOWN:]),
    }
