"""manage.py import_template FILE [--dry-run] [--project SLUG]: import a pipeline template JSON."""

import json
import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext as _

from catalog.models import Project
from dataflare_portal.core.services import builtin_operator

from ...services import TemplateInputError, TemplateValidationFailed, template_import_text


class Command(BaseCommand):
    help = "Import a pipeline template (JSON file or - for stdin); --dry-run reports what would be created."

    def add_arguments(self, parser):
        parser.add_argument("file", help="Path to the template JSON, or - for stdin.")
        parser.add_argument("--dry-run", action="store_true", help="Validate and report; write nothing.")
        parser.add_argument("--project", help="Import into this project (slug) instead of the template's.")
        parser.add_argument("--json", action="store_true", help="Print the import plan as JSON.")

    def handle(self, *args, **options):
        limit = settings.MAX_UPLOAD_BYTES
        try:
            if options["file"] == "-":
                raw = sys.stdin.buffer.read(limit + 1)
            else:
                with open(options["file"], "rb") as fh:
                    raw = fh.read(limit + 1)
        except OSError as exc:
            raise CommandError(_("Cannot read %(file)s: %(err)s") % {"file": options["file"], "err": exc.strerror})
        project = None
        if options["project"]:
            project = Project.objects.filter(slug=options["project"]).first()
            if project is None:
                raise CommandError(_("Project %(slug)r does not exist.") % {"slug": options["project"]})
        try:
            plan = template_import_text(
                raw=raw, actor=builtin_operator(), dry_run=options["dry_run"], project=project, probe=True
            )
        except TemplateInputError as exc:
            raise CommandError(f"{exc.code}: {exc.path}: {exc.message}" if exc.path else f"{exc.code}: {exc.message}")
        except TemplateValidationFailed as exc:
            lines = [f"  {i.path}{f' [{i.stage}]' if i.stage else ''}: {i.message}" for i in exc.report.errors]
            raise CommandError(_("Template is invalid:") + "\n" + "\n".join(lines))
        if options["json"]:
            self.stdout.write(json.dumps(plan.to_dict(), indent=2, default=str))
            return
        for item in plan.actions:
            line = f"{item['action']} {item['object']} {item['name']}"
            self.stdout.write(_("would %(action)s") % {"action": line} if plan.dry_run else line)
        for warning in plan.report.warnings:
            self.stdout.write(
                self.style.WARNING(_("warning: %(path)s: %(msg)s") % {"path": warning.path, "msg": warning.message})
            )
        if plan.dry_run:
            self.stdout.write(self.style.SUCCESS(_("Dry run: nothing was written.")))
        else:
            self.stdout.write(
                self.style.SUCCESS(
                    _("Imported %(name)s v%(v)d (pipeline %(pk)s).")
                    % {"name": plan.template.name, "v": plan.template.version, "pk": plan.pipeline.pk}
                )
            )
