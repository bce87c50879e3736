"""Run one metrics rollup pass (what beat runs every ROLLUP_INTERVAL seconds), then optionally prune."""

from django.core.management.base import BaseCommand
from django.utils.translation import gettext as _

from metrics.services import metrics_prune, metrics_rollup


class Command(BaseCommand):
    help = "Roll raw metric events up to now (idempotent); --prune also applies retention."

    def add_arguments(self, parser):
        parser.add_argument("--prune", action="store_true", help="Also delete rolled-up raw events past retention.")

    def handle(self, *args, prune=False, verbosity=1, **options):
        result = metrics_rollup()
        if verbosity:
            self.stdout.write(_("Rolled up %(start)s .. %(end)s (%(rows)d rows).") % vars(result))
        if prune:
            pruned = metrics_prune()
            if verbosity:
                self.stdout.write(
                    _(
                        "Pruned: %(batch_events)d batch events, %(token_usage)d token events, "
                        "%(minute_rollups)d minute rollups."
                    )
                    % vars(pruned)
                )
