"""Schedules: presets <-> cron, validation, and the next fire times.

Pure functions with no Django import, so the sandbox and the contract can use them.
"""

import itertools
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

PRESETS = {
    "daily": "0 6 * * *",
    "weekly": "0 6 * * 1",
    "monthly": "0 6 1 * *",
}


class ScheduleError(ValueError):
    pass


def to_cron(schedule: str) -> str:
    return PRESETS.get(schedule, schedule)


def check_schedule(schedule: object) -> str:
    """Return the schedule normalized (a preset name or a 5-field cron), or raise."""
    if not isinstance(schedule, str) or not schedule.strip():
        raise ScheduleError(
            "schedule must be 'daily', 'weekly', 'monthly' or a 5-field cron expression"
        )
    schedule = " ".join(schedule.split()).lower()
    if schedule in PRESETS:
        return schedule
    if len(schedule.split(" ")) != 5:
        raise ScheduleError(
            f"schedule {schedule!r} is neither a preset (daily, weekly, monthly) "
            "nor a 5-field cron expression (minute hour day month weekday)"
        )
    try:
        CronSim(schedule, datetime(2000, 1, 1))
    except CronSimError as exc:
        raise ScheduleError(
            f"schedule {schedule!r} is not a valid cron expression: {exc}"
        ) from None
    return schedule


def shortest_interval_minutes(schedule: str) -> int:
    """The fewest minutes between two runs of a valid schedule.

    From the cron's minute and hour fields: the gaps between the times of a day and the
    gap from a day's last time to the next day's first. The day fields only thin out the
    days, so a cron firing on isolated days may run less often than this says, never more.
    """
    cron = CronSim(to_cron(schedule), datetime(2000, 1, 1))
    times = sorted(hour * 60 + minute for hour in cron.hours for minute in cron.minutes)
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    return min([*gaps, times[0] + 24 * 60 - times[-1]])


def check_interval(schedule: str, minimum_minutes: int) -> str:
    """Refuse a schedule that fires more often than the site allows (0: no minimum)."""
    interval = shortest_interval_minutes(schedule)
    if interval < minimum_minutes:
        every = "every minute" if interval == 1 else f"every {interval} minutes"
        raise ScheduleError(
            f"schedule {schedule!r} runs {every}; this site allows at most one run every "
            f"{minimum_minutes} minutes"
        )
    return schedule


def check_timezone(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ScheduleError("time zone must be an IANA name such as 'Europe/London'")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            f"unknown time zone {name!r}: use an IANA name such as 'Europe/London'"
        ) from None
    return name


def next_runs(schedule: str, timezone: str, after: datetime, count: int = 1) -> list[datetime]:
    """The next `count` fire times strictly after `after`, in UTC.

    Cron fields are read in the deployment's own time zone (a daily 06:00 job stays
    at 06:00 local across DST changes). Like cron, cronsim fires a time that a
    spring-forward gap removes right after the gap, so a daily job still runs that
    day, and fires once in an autumn overlap. cronsim ignores `fold`, so from an
    instant in the second pass of an overlap it can answer a time before `after`:
    those are skipped.
    """
    local_after = after.astimezone(ZoneInfo(timezone))
    iterator = CronSim(to_cron(schedule), local_after)
    runs: list[datetime] = []
    while len(runs) < count:
        run = next(iterator).astimezone(UTC)
        if run > after:
            runs.append(run)
    return runs


def describe(schedule: str) -> str:
    if schedule in PRESETS:
        return f"{schedule} (cron {PRESETS[schedule]})"
    return f"cron {schedule}"
