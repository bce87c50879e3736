"""Schedule slots: the instants a schedule fires at, in UTC.

A cron schedule is evaluated by cronsim in its IANA time zone, so "30 2 * * *" in Europe/Berlin fires at
03:00 on the spring-forward day (02:30 does not exist; as cron does) and once on the fall-back day, and an
hourly schedule fires at both 02:00s of the repeated hour (two distinct instants). An interval schedule
fires at anchor + k * interval. A slot is the exact instant (seconds, no microseconds): it is the key
that makes a fire idempotent (schedules_scheduled_fire UNIQUE (schedule, slot)).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from cronsim import CronSim, CronSimError
from django.utils.translation import gettext as _

__all__ = [
    "ScheduleSpecError",
    "cron_check",
    "slots_after",
    "slots_before",
    "timezone_check",
]

MAX_CRON_LENGTH = 120


class ScheduleSpecError(ValueError):
    """A cron expression, time zone or interval that cannot be used; `field` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def timezone_check(name: str) -> ZoneInfo:
    """The IANA zone of this name; raises ScheduleSpecError naming `timezone`."""
    if not isinstance(name, str) or not name or len(name) > 64 or name not in _zones():
        raise ScheduleSpecError(
            "timezone",
            _("Unknown time zone %(name)s; use an IANA name such as Asia/Shanghai or UTC.") % {"name": repr(name)[:70]},
        )
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleSpecError("timezone", _("Unknown time zone %(name)s.") % {"name": repr(name)[:70]}) from None


_zone_names: set[str] = set()


def _zones() -> set[str]:
    if not _zone_names:
        _zone_names.update(available_timezones())
        _zone_names.add("UTC")
    return _zone_names


def cron_check(expr: str, zone: ZoneInfo | None = None) -> str:
    """The normalised expression (single spaces); raises ScheduleSpecError naming `cron`."""
    if not isinstance(expr, str) or not expr.strip():
        raise ScheduleSpecError("cron", _("Enter a cron expression such as '0 2 * * *'."))
    expr = " ".join(expr.split())
    if len(expr) > MAX_CRON_LENGTH or len(expr.split(" ")) != 5:
        raise ScheduleSpecError(
            "cron", _("A cron expression has five fields: minute hour day-of-month month day-of-week.")
        )
    try:
        it = CronSim(expr, datetime.now(zone or UTC))
        next(it)
    except (CronSimError, StopIteration, ValueError) as exc:
        raise ScheduleSpecError("cron", _("Invalid cron expression: %(error)s") % {"error": str(exc)[:200]}) from None
    return expr


def _cron(expr: str, zone: ZoneInfo, start: datetime, reverse: bool) -> Iterator[datetime]:
    for local in CronSim(expr, start.astimezone(zone).replace(microsecond=0), reverse=reverse):
        yield local.astimezone(UTC)


def _floor(dt: datetime) -> datetime:
    return dt.astimezone(UTC).replace(microsecond=0)


def slots_after(schedule, after: datetime, count: int) -> list[datetime]:
    """The next `count` slots strictly after `after` (UTC)."""
    out: list[datetime] = []
    if schedule.kind == "cron":
        for slot in _cron(schedule.cron, ZoneInfo(schedule.timezone), after, reverse=False):
            if slot > after:
                out.append(slot)
            if len(out) >= count:
                break
        return out
    step = int(schedule.interval_seconds)
    anchor = _floor(schedule.anchor_at)
    k = max(0, int((after - anchor).total_seconds() // step) + 1)
    while len(out) < count:
        slot = anchor + timedelta(seconds=k * step)
        if slot > after:
            out.append(slot)
        k += 1
    return out


def slots_before(schedule, until: datetime, after: datetime | None, count: int) -> list[datetime]:
    """Up to `count` latest slots in (after, until], newest first (UTC)."""
    out: list[datetime] = []
    if schedule.kind == "cron":
        # cronsim's reverse search starts strictly before its start: start one second past `until`.
        start = _floor(until) + timedelta(seconds=1)
        for slot in _cron(schedule.cron, ZoneInfo(schedule.timezone), start, reverse=True):
            if slot > until:
                continue
            if after is not None and slot <= after:
                break
            out.append(slot)
            if len(out) >= count:
                break
        return out
    step = int(schedule.interval_seconds)
    anchor = _floor(schedule.anchor_at)
    if until < anchor:
        return out
    k = int((until - anchor).total_seconds() // step)
    while k >= 0 and len(out) < count:
        slot = anchor + timedelta(seconds=k * step)
        if after is not None and slot <= after:
            break
        out.append(slot)
        k -= 1
    return out
