"""Recompute metric rollups for a time range from the raw events still kept."""

import datetime as dt

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
    help = "Recompute minute, hour and day rollups in [--start, --end) from raw events."

    def add_arguments(self, parser):
        parser.add_argument("--start", required=True, help="ISO date or date-time (portal time zone if naive).")
        parser.add_argument("--end", required=True, help="ISO date or date-time, exclusive.")

    def handle(self, *args, start, end, verbosity=1, **options):
        start_at, end_at = _parse(start, "start"), _parse(end, "end")
        if end_at <= start_at:
            raise CommandError(_("--end must be after --start."))

        def progress(day, rows):
            if verbosity > 1:
                self.stdout.write(f"{day:%Y-%m-%d}: {rows}")

        began = timezone.now()
        rows = metrics_rollup_rebuild(start=start_at, end=end_at, progress=progress)
        seconds = (timezone.now() - began).total_seconds()
        if verbosity:
            self.stdout.write(
                self.style.SUCCESS(
                    _("Rebuilt rollups: %(rows)d rows written in %(s).1f s.") % {"rows": rows, "s": seconds}
                )
            )
