"""Recompute metric rollups for a time range from the raw events still kept."""

import datetime as dt
import os

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from django.utils.translation import gettext as _

from metrics.services import metrics_rollup_rebuild


def _parse(value: str, name: str) -> dt.datetime:
    parsed = parse_datetime(value)
    if parsed is None:
        day = parse_date(value)
        if day is None:
            raise CommandError(_("--%(name)s: not a date or date-time: %(value)r") % {"name": name, "value": value})
        parsed = dt.datetime.combine(day, dt.time())
    if timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed)
    return parsed


class Command(BaseCommand):
    help = (
        "Recompute minute, hour and day rollups in [--start, --end) from raw events. "
        "A killed rebuild of the same range resumes where it stopped."
    )

    def add_arguments(self, parser):
        parser.add_argument("--start", required=True, help="ISO date or date-time (portal time zone if naive).")
        parser.add_argument("--end", required=True, help="ISO date or date-time, exclusive.")
        parser.add_argument(
            "--jobs",
            type=int,
            default=min(4, os.cpu_count() or 1),
            help="Days rolled up at once on PostgreSQL (default: CPUs, at most 4); SQLite uses 1.",
        )

    def handle(self, *args, start, end, jobs, verbosity=1, **options):
        start_at, end_at = _parse(start, "start"), _parse(end, "end")
        if end_at <= start_at:
            raise CommandError(_("--end must be after --start."))
        if jobs < 1:
            raise CommandError(_("--jobs must be at least 1."))

        def progress(day, rows):
            if verbosity > 1:
                self.stdout.write(f"{day:%Y-%m-%d}: {rows}")

        began = timezone.now()
        rows = metrics_rollup_rebuild(start=start_at, end=end_at, progress=progress, jobs=jobs)
        seconds = (timezone.now() - began).total_seconds()
        if verbosity:
            self.stdout.write(
                self.style.SUCCESS(
                    _("Rebuilt rollups: %(rows)d rows written in %(s).1f s.") % {"rows": rows, "s": seconds}
                )
            )
