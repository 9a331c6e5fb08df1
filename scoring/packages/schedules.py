"""Schedules: presets <-> cron, validation, and the next fire times.

Pure functions with no Django import, so the sandbox and the contract can use them.
"""

import itertools
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

PRESETS = {
    "daily": "0 6 * * *",
    "weekly": "0 6 * * 1",
    "monthly": "0 6 1 * *",
}
# How far a cron of several times a day is searched for a day it fires more than once:
# days of 1,440 fire times (every minute) and crons of a few days a year both find one.
SEARCHED_FIRES = 100_000


class ScheduleError(ValueError):
    pass


def to_cron(schedule: str) -> str:
    return PRESETS.get(schedule, schedule)


def check_schedule(schedule: object, timezone: str = "UTC", after: datetime | None = None) -> str:
    """Return the schedule normalized (a preset name or a 5-field cron), or raise.

    A schedule fires at most once a day (counted in `timezone`, from the day after `after`,
    now by default): each run scores its day's slice, so trying again is the business of
    the package's params, never of a second fire time."""
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
        cron = CronSim(schedule, datetime(2000, 1, 1))
    except CronSimError as exc:
        raise ScheduleError(
            f"schedule {schedule!r} is not a valid cron expression: {exc}"
        ) from None
    if len(cron.hours) * len(cron.minutes) > 1:  # else no day has two fire times
        busy = day_fired_more_than_once(schedule, timezone, after or datetime.now(UTC))
        if busy is not None:
            raise ScheduleError(fires_more_than_once(schedule, *busy))
    return schedule


def day_fired_more_than_once(
    schedule: str, timezone: str, after: datetime
) -> tuple[date, list[str]] | None:
    """The first day from the day after `after` on which the cron fires more than once, and
    its local fire times; none in the next SEARCHED_FIRES fire times.

    A run scores one day's slice (the run's date is its fire time's local date), so the
    fire times are counted in the time zone rather than read from the cron's fields: a
    spring-forward gap fires the times it removes at once, one run."""
    zone = ZoneInfo(timezone)
    tomorrow = datetime.combine(after.astimezone(zone).date() + timedelta(days=1), time(), zone)
    day, times = None, []
    fires = fire_times(schedule, timezone, tomorrow.astimezone(UTC) - timedelta(microseconds=1))
    for fire in itertools.islice(fires, SEARCHED_FIRES):
        local = fire.astimezone(zone)
        if local.date() != day:
            if len(times) > 1:
                break
            day, times = local.date(), []
        times.append(local.strftime("%H:%M"))
    return (day, times) if len(times) > 1 else None


def fires_more_than_once(schedule: str, day: date, times: list[str]) -> str:
    fires = "twice" if len(times) == 2 else f"{len(times):,} times"
    at = " and ".join(times) if len(times) == 2 else f"{times[0]}, {times[1]}, ..."
    return (
        f"schedule {schedule!r} fires {fires} on {day.isoformat()} (at {at}), but a run scores "
        "a whole day's slice, so a second run that day would find it scored: pick one time a "
        "day, and to have a failed run tried again set 'max_attempts' and "
        "'retry_delay_minutes' in the package's params"
    )


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
    """The next `count` fire times strictly after `after`, in UTC."""
    return list(itertools.islice(fire_times(schedule, timezone, after), count))


def fire_times(schedule: str, timezone: str, after: datetime) -> Iterator[datetime]:
    """The fire times strictly after `after`, in UTC, one after the other.

    Cron fields are read in the deployment's own time zone (a daily 06:00 job stays
    at 06:00 local across DST changes). Like cron, cronsim fires a time that a
    spring-forward gap removes right after the gap, so a daily job still runs that
    day, and fires once in an autumn overlap. cronsim ignores `fold`, so from an
    instant in the second pass of an overlap it can answer a time before `after`:
    those are skipped.
    """
    local_after = after.astimezone(ZoneInfo(timezone))
    for fire in CronSim(to_cron(schedule), local_after):
        fire = fire.astimezone(UTC)
        if fire > after:
            yield fire


def describe(schedule: str) -> str:
    if schedule in PRESETS:
        return f"{schedule} (cron {PRESETS[schedule]})"
    return f"cron {schedule}"
