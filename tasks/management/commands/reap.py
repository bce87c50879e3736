"""Run reaper passes by hand (beat runs `tasks.reap` every REAPER_INTERVAL seconds)."""

import time

from django.core.management.base import BaseCommand
from django.utils.translation import gettext as _

from tasks.services import reap


class Command(BaseCommand):
    help = _("Re-queue expired leases and lost messages, wake waiting batches, finalise stuck runs.")

    def add_arguments(self, parser):
        parser.add_argument("--loop", type=float, default=0, help=_("Repeat every N seconds (0: one pass)."))

    def handle(self, *args, **opts):
        while True:
            counts = reap()
            self.stdout.write(" ".join(f"{k}={v}" for k, v in counts.items()))
            if not opts["loop"]:
                return
            time.sleep(opts["loop"])
