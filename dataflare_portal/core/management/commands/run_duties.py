"""Run the periodic duties that are due now, each under its lease (what workers do while beat is silent)."""

from django.core.management.base import BaseCommand
from django.utils.translation import gettext as _

from dataflare_portal.core.duties import process_name, watch_once


class Command(BaseCommand):
    help = _("Run the periodic duties (reaper, rollups, alerts) that are due now, one runner per duty at a time.")

    def handle(self, *args, **options):
        ran = watch_once(by=process_name("worker"))
        self.stdout.write(", ".join(ran) if ran else _("nothing due"))
