"""manage.py test_datasource <id or name>... — test connections (same service as the admin and the API)."""

from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext as _

from catalog.models import DataSource
from catalog.services import datasource_test_connection
from dataflare_portal.core.services import builtin_operator


class Command(BaseCommand):
    help = _("Test the connection of data sources (by id or name); exits 1 if any fails.")

    def add_arguments(self, parser):
        parser.add_argument("sources", nargs="+", help=_("data source ids or names"))

    def handle(self, *args, sources, **options):
        actor = builtin_operator()
        failed = 0
        for ref in sources:
            source = DataSource.objects.filter(pk=int(ref)).first() if ref.isdigit() else None
            source = source or DataSource.objects.filter(name=ref).first()
            if source is None:
                raise CommandError(_("No data source %(ref)s.") % {"ref": ref})
            result = datasource_test_connection(actor=actor, source=source)
            style = self.style.SUCCESS if result.ok else self.style.ERROR
            self.stdout.write(style(f"{source.name}: {result.detail} ({result.latency_ms:.0f} ms)"))
            failed += not result.ok
        if failed:
            raise SystemExit(1)
