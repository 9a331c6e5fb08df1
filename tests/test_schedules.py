"""Unit tests for scoring.packages.schedules: presets, validation, time zones and next fire times."""

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest

from scoring.packages.schedules import (
    PRESETS,
    ScheduleError,
    check_schedule,
    check_timezone,
    describe,
    next_runs,
    to_cron,
)

LONDON = "Europe/London"
NOT_A_SCHEDULE = "schedule must be 'daily', 'weekly', 'monthly' or a 5-field cron expression"


def utc(*parts) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def refusal(check, value) -> str:
    with pytest.raises(ScheduleError) as caught:
        check(value)
    return str(caught.value)


def local_dates(runs, timezone=LONDON) -> list[date]:
    return [run.astimezone(ZoneInfo(timezone)).date() for run in runs]


# --- presets and validation -------------------------------------------------


@pytest.mark.parametrize(
    "preset, cron",
    [
        ("daily", "0 6 * * *"),
        ("weekly", "0 6 * * 1"),
        ("monthly", "0 6 1 * *"),
    ],
)
def test_it_maps_presets_to_cron(preset, cron):
    assert PRESETS[preset] == cron
    assert to_cron(preset) == cron
    assert describe(preset) == f"{preset} (cron {cron})"


def test_it_leaves_a_cron_expression_as_it_is():
    assert to_cron("15 2 * * *") == "15 2 * * *"
    assert describe("15 2 * * *") == "cron 15 2 * * *"


@pytest.mark.parametrize(
    "schedule, normalized",
    [
        ("daily", "daily"),
        ("  Weekly\n", "weekly"),
        ("MONTHLY", "monthly"),
        ("0 6 * * *", "0 6 * * *"),
        ("  0   6\t* *  MON-FRI ", "0 6 * * mon-fri"),
        ("0 6 1,15 * *", "0 6 1,15 * *"),
    ],
)
def test_it_normalizes_whitespace_and_case(schedule, normalized):
    assert check_schedule(schedule) == normalized


@pytest.mark.parametrize("schedule", ["0 6 * *", "0 6 * * * *", "hourly"])
def test_it_refuses_anything_but_a_preset_or_five_fields(schedule):
    assert refusal(check_schedule, schedule) == (
        f"schedule {schedule!r} is neither a preset (daily, weekly, monthly) "
        "nor a 5-field cron expression (minute hour day month weekday)"
    )


@pytest.mark.parametrize(
    "schedule, problem",
    [
        ("60 * * * *", "Bad minute"),
        ("* 24 * * *", "Bad hour"),
        ("* * 32 * *", "Bad day-of-month"),
        ("* * 0 * *", "Bad day-of-month"),
        ("* * * 13 *", "Bad month"),
        ("* * * * 8", "Bad day-of-week"),
    ],
)
def test_it_refuses_out_of_range_fields_with_the_message(schedule, problem):
    assert refusal(check_schedule, schedule) == (
        f"schedule {schedule!r} is not a valid cron expression: {problem}"
    )


@pytest.mark.parametrize("schedule", ["", "   ", None, 6, ["daily"]])
def test_it_refuses_empty_schedules_and_non_strings(schedule):
    assert refusal(check_schedule, schedule) == NOT_A_SCHEDULE


# --- once a day ------------------------------------------------------------------

MONDAY_NOON = utc(2026, 12, 7, 12, 0)
RETRY_INSTEAD = (
    "but a run scores a whole day's slice, so a second run that day would find it scored: "
    "pick one time a day, and to have a failed run tried again set 'max_attempts' and "
    "'retry_delay_minutes' in the package's params"
)


def refused_after(schedule, timezone, after) -> str:
    with pytest.raises(ScheduleError) as caught:
        check_schedule(schedule, timezone, after)
    return str(caught.value)


def test_a_cron_of_two_times_a_day_is_refused_naming_tomorrow_and_what_to_do_instead():
    assert refused_after("0 6,18 * * *", "UTC", MONDAY_NOON) == (
        f"schedule '0 6,18 * * *' fires twice on 2026-12-08 (at 06:00 and 18:00), {RETRY_INSTEAD}"
    )


def test_a_cron_of_every_minute_is_refused_with_how_often_it_fires_that_day():
    assert refused_after("* * * * *", "UTC", MONDAY_NOON) == (
        f"schedule '* * * * *' fires 1,440 times on 2026-12-08 (at 00:00, 00:01, ...), "
        f"{RETRY_INSTEAD}"
    )
    assert refused_after("*/5 9-17 * * *", "UTC", MONDAY_NOON).startswith(
        "schedule '*/5 9-17 * * *' fires 108 times on 2026-12-08 (at 09:00, 09:05, ...)"
    )


def test_the_day_named_is_the_first_the_cron_fires_twice_on():
    assert refused_after("0 6,18 * * 1", "UTC", MONDAY_NOON).startswith(
        "schedule '0 6,18 * * 1' fires twice on 2026-12-14 (at 06:00 and 18:00)"
    )
    assert refused_after("0 6,18 29 2 *", "UTC", MONDAY_NOON).startswith(
        "schedule '0 6,18 29 2 *' fires twice on 2028-02-29"
    )


def test_the_days_are_the_deployments_own():
    late_on_monday = utc(2026, 12, 7, 23, 30)  # already Tuesday 12:30 in Auckland

    assert "fires twice on 2026-12-08" in refused_after("0 6,18 * * *", "UTC", late_on_monday)
    assert "fires twice on 2026-12-09" in refused_after(
        "0 6,18 * * *", "Pacific/Auckland", late_on_monday
    )


def test_a_spring_forward_day_that_fires_a_cron_once_is_not_the_day_named():
    # 01:00 and 01:30 do not exist on 29 March 2026 in London: both fire at 02:00 BST, one
    # run. The next 29 March fires them apart.
    assert next_runs("0,30 1 29 3 *", LONDON, utc(2026, 3, 1), count=2) == [
        utc(2026, 3, 29, 1, 0),
        utc(2027, 3, 29, 0, 0),  # 01:00 BST
    ]
    assert refused_after("0,30 1 29 3 *", LONDON, utc(2026, 3, 1)).startswith(
        "schedule '0,30 1 29 3 *' fires twice on 2027-03-29 (at 01:00 and 01:30)"
    )


@pytest.mark.parametrize(
    "schedule, timezone",
    [
        ("daily", LONDON),
        ("weekly", "UTC"),
        ("monthly", "America/New_York"),
        ("30 1 * * *", LONDON),  # once in the autumn overlap (see next runs)
        ("45 23 * * mon-fri", "Pacific/Auckland"),
        ("0 0 29 2 *", "UTC"),
    ],
)
def test_a_cron_of_one_time_a_day_is_valid_in_any_time_zone(schedule, timezone):
    assert check_schedule(schedule, timezone, MONDAY_NOON) == schedule


# --- time zones -----------------------------------------------------------------


@pytest.mark.parametrize("name", [LONDON, "UTC", "America/New_York"])
def test_it_accepts_iana_time_zones(name):
    assert check_timezone(name) == name


@pytest.mark.parametrize("name", ["Mars/Base", "../etc/passwd"])
def test_it_refuses_unknown_time_zones(name):
    assert refusal(check_timezone, name) == (
        f"unknown time zone {name!r}: use an IANA name such as 'Europe/London'"
    )


@pytest.mark.parametrize("name", ["", None])
def test_it_refuses_an_empty_time_zone(name):
    assert refusal(check_timezone, name) == (
        "time zone must be an IANA name such as 'Europe/London'"
    )


# --- next runs ------------------------------------------------------------------


def test_a_daily_job_runs_at_0600_utc_after_a_given_instant():
    assert next_runs("daily", "UTC", utc(2026, 1, 15, 7, 0), count=2) == [
        utc(2026, 1, 16, 6, 0),
        utc(2026, 1, 17, 6, 0),
    ]
    assert next_runs("daily", "UTC", utc(2026, 1, 15, 5, 59, 59, 999)) == [utc(2026, 1, 15, 6, 0)]


def test_a_run_at_exactly_the_fire_time_is_not_repeated():
    assert next_runs("daily", "UTC", utc(2026, 1, 15, 6, 0)) == [utc(2026, 1, 16, 6, 0)]


def test_a_daily_london_job_is_0500_utc_in_summer():
    assert next_runs("daily", LONDON, utc(2026, 7, 1, 0, 0)) == [utc(2026, 7, 1, 5, 0)]


def test_a_daily_london_job_is_0600_utc_in_winter():
    assert next_runs("daily", LONDON, utc(2026, 1, 10, 0, 0)) == [utc(2026, 1, 10, 6, 0)]


def test_a_0130_london_job_runs_right_after_the_spring_forward_gap():
    # 01:30 does not exist on 29 March: the daily run happens at 02:00 BST, not never.
    runs = next_runs("30 1 * * *", LONDON, utc(2026, 3, 28, 0, 0), count=3)

    assert runs == [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1, 0), utc(2026, 3, 30, 0, 30)]


def test_a_0130_london_job_fires_once_in_the_autumn_overlap():
    runs = next_runs("30 1 * * *", LONDON, utc(2026, 10, 24, 0, 0), count=3)

    assert local_dates(runs) == [date(2026, 10, 24), date(2026, 10, 25), date(2026, 10, 26)]
    assert runs[0] == utc(2026, 10, 24, 0, 30)  # 01:30 BST
    assert runs[1] in (utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1, 30))
    assert runs[2] == utc(2026, 10, 26, 1, 30)  # 01:30 GMT


def test_a_0130_london_job_already_run_in_the_overlap_does_not_run_again():
    after = utc(2026, 10, 25, 0, 45)  # 01:45 BST, just after the first 01:30

    assert next_runs("30 1 * * *", LONDON, after) == [utc(2026, 10, 26, 1, 30)]


def assert_increasing_and_after(runs, after, count):
    assert len(runs) == count
    assert all(run.tzinfo is UTC for run in runs)
    assert runs[0] > after
    assert all(earlier < later for earlier, later in zip(runs, runs[1:], strict=False))


@pytest.mark.parametrize(
    "schedule, timezone, after",
    [
        ("daily", "UTC", utc(2026, 1, 1)),
        ("weekly", LONDON, utc(2026, 3, 20)),
        ("*/30 * * * *", LONDON, utc(2026, 3, 28, 23, 0)),  # across the spring gap
        ("*/30 * * * *", LONDON, utc(2026, 10, 24, 23, 0)),  # across the autumn overlap
        ("0 * * * *", LONDON, utc(2026, 10, 25, 0, 15)),  # 01:15 BST, in the overlap
        ("30 1 * * *", "America/New_York", utc(2026, 3, 1)),
    ],
)
def test_it_returns_count_increasing_utc_times_strictly_after_after(schedule, timezone, after):
    assert_increasing_and_after(next_runs(schedule, timezone, after, count=10), after, 10)


def test_it_returns_times_after_an_instant_in_the_second_pass_of_the_overlap():
    after = utc(2026, 10, 25, 1, 0)  # 01:00 GMT, the second 01:00 of the night

    runs = next_runs("30 1 * * *", LONDON, after, count=2)

    assert_increasing_and_after(runs, after, 2)


def test_a_monthly_job_fires_on_the_first_of_each_month():
    runs = next_runs("monthly", "UTC", utc(2026, 1, 15), count=3)

    assert runs == [utc(2026, 2, 1, 6, 0), utc(2026, 3, 1, 6, 0), utc(2026, 4, 1, 6, 0)]


def test_a_monthly_london_job_fires_on_the_first_at_0600_local():
    runs = next_runs("monthly", LONDON, utc(2026, 3, 15), count=2)

    assert runs == [utc(2026, 4, 1, 5, 0), utc(2026, 5, 1, 5, 0)]
