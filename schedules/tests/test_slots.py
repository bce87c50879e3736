"""Slots of cron and interval schedules: time zones (UTC, Asia/Shanghai) and DST (Europe/Berlin, America/New_York)."""

from datetime import UTC, datetime, timedelta

import pytest

from schedules.models import Schedule
from schedules.slots import ScheduleSpecError, cron_check, slots_after, slots_before, timezone_check


def cron(expr: str, tz: str = "UTC") -> Schedule:
    return Schedule(kind="cron", cron=expr, timezone=tz)


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_it_fires_daily_cron_in_utc():
    assert slots_after(cron("0 2 * * *"), utc(2026, 1, 1, 2, 0), 3) == [
        utc(2026, 1, 2, 2),
        utc(2026, 1, 3, 2),
        utc(2026, 1, 4, 2),
    ]


def test_it_fires_asia_shanghai_eight_hours_ahead_of_utc():
    # 02:00 in Shanghai (UTC+8, no DST) is 18:00 UTC the day before, every day of the year.
    got = slots_after(cron("0 2 * * *", "Asia/Shanghai"), utc(2026, 3, 1), 2)
    assert got == [utc(2026, 3, 1, 18), utc(2026, 3, 2, 18)]
    summer = slots_after(cron("0 2 * * *", "Asia/Shanghai"), utc(2026, 7, 1), 1)
    assert summer == [utc(2026, 7, 1, 18)]


def test_it_keeps_local_time_across_the_berlin_spring_forward():
    # 29 March 2026: 02:00 CET jumps to 03:00 CEST. 02:30 does not exist that day: cron runs it at 03:00.
    got = slots_after(cron("30 2 * * *", "Europe/Berlin"), utc(2026, 3, 27, 12), 3)
    assert got == [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1, 0), utc(2026, 3, 30, 0, 30)]
    # 09:00 local moves from 08:00 UTC to 07:00 UTC across the change.
    nine = slots_after(cron("0 9 * * *", "Europe/Berlin"), utc(2026, 3, 28, 0), 2)
    assert nine == [utc(2026, 3, 28, 8), utc(2026, 3, 29, 7)]


def test_it_fires_both_instants_of_the_repeated_hour_in_autumn():
    # 25 October 2026: 03:00 CEST falls back to 02:00 CET; an hourly schedule has two distinct 02:00 slots.
    got = slots_after(cron("0 * * * *", "Europe/Berlin"), utc(2026, 10, 24, 22, 30), 4)
    assert got == [utc(2026, 10, 24, 23), utc(2026, 10, 25, 0), utc(2026, 10, 25, 1), utc(2026, 10, 25, 2)]
    assert len(set(got)) == 4
    # A daily 02:30 fires once that day, not twice.
    daily = slots_after(cron("30 2 * * *", "Europe/Berlin"), utc(2026, 10, 24, 12), 2)
    assert daily[1] - daily[0] == timedelta(hours=25)


def test_it_lists_the_latest_slots_newest_first_and_stops_at_the_watermark():
    s = cron("*/10 * * * *", "Asia/Shanghai")
    got = slots_before(s, utc(2026, 5, 1, 12, 35), utc(2026, 5, 1, 12, 0), 10)
    assert got == [utc(2026, 5, 1, 12, 30), utc(2026, 5, 1, 12, 20), utc(2026, 5, 1, 12, 10)]
    assert slots_before(s, utc(2026, 5, 1, 12, 35), None, 2) == [utc(2026, 5, 1, 12, 30), utc(2026, 5, 1, 12, 20)]
    # A slot exactly at `until` is due.
    assert slots_before(s, utc(2026, 5, 1, 12, 40), utc(2026, 5, 1, 12, 30), 5) == [utc(2026, 5, 1, 12, 40)]


def test_it_counts_interval_slots_from_the_anchor():
    s = Schedule(kind="interval", interval_seconds=90, anchor_at=utc(2026, 1, 1, 0, 0, 0))
    assert slots_after(s, utc(2026, 1, 1, 0, 2), 2) == [utc(2026, 1, 1, 0, 3), utc(2026, 1, 1, 0, 4, 30)]
    assert slots_before(s, utc(2026, 1, 1, 0, 4), utc(2026, 1, 1, 0, 0), 10) == [
        utc(2026, 1, 1, 0, 3),
        utc(2026, 1, 1, 0, 1, 30),
    ]
    assert slots_before(s, utc(2025, 12, 31), None, 3) == []


@pytest.mark.parametrize(
    "expr",
    [
        "",
        "* * * *",
        "61 * * * *",
        "* 24 * * *",
        "* * * * * *",
        "0 2 * * mon-",
        "{x} * * * *",
        "0 " + "1," * 70 + "1 * * *",
    ],
)
def test_it_refuses_a_bad_cron_expression_naming_the_field(expr):
    with pytest.raises(ScheduleSpecError) as err:
        cron_check(expr)
    assert err.value.field == "cron"


@pytest.mark.parametrize("name", ["", "Mars/Olympus", "../../etc/passwd", "utc ", None, "Asia/Shanghai" * 10])
def test_it_refuses_an_unknown_time_zone(name):
    with pytest.raises(ScheduleSpecError) as err:
        timezone_check(name)
    assert err.value.field == "timezone"


def test_it_normalises_spaces_in_a_cron_expression():
    assert cron_check("  0   2 *  * * ") == "0 2 * * *"
    assert str(timezone_check("Asia/Shanghai")) == "Asia/Shanghai"
