"""manage.py profile_dataset <id or name>... — infer schema and count rows (same service as the admin and the API)."""

import json

from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext as _

from catalog.connectors import ConnectorError
from catalog.models import Dataset
from catalog.services import dataset_profile
from dataflare_portal.core.services import builtin_operator


class Command(BaseCommand):
    help = _("Profile datasets (schema, exact row count, sample); prints the result as JSON with --json.")

    def add_arguments(self, parser):
        parser.add_argument("datasets", nargs="+", help=_("dataset ids or names"))
        parser.add_argument("--sample-size", type=int, default=200)
        parser.add_argument("--json", action="store_true", help=_("print the profile as JSON"))

    def handle(self, *args, datasets, sample_size, **options):
        actor = builtin_operator()
        for ref in datasets:
            dataset = Dataset.objects.filter(pk=int(ref)).first() if ref.isdigit() else None
            dataset = dataset or Dataset.objects.filter(name=ref).first()
            if dataset is None:
                raise CommandError(_("No dataset %(ref)s.") % {"ref": ref})
            try:
                result = dataset_profile(actor=actor, dataset=dataset, sample_size=sample_size, preview_limit=5)
            except (ConnectorError, OSError) as exc:
                raise CommandError(f"{dataset.name}: {exc}") from None
            if options["json"]:
                self.stdout.write(json.dumps({"dataset": dataset.name, **result}, default=str, ensure_ascii=False))
                continue
            fields = ", ".join(f"{f['name']}:{f['type']}" for f in result["schema"])
            self.stdout.write(
                self.style.SUCCESS(_("%(name)s: %(rows)d rows") % {"name": dataset.name, "rows": result["row_count"]})
                + f"  [{fields}]"
            )
