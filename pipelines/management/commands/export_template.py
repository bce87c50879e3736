"""manage.py export_template PIPELINE [--project SLUG] [-o FILE]: write a pipeline's template JSON."""

import json

from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext as _

from dataflare_portal.core.services import builtin_operator

from ...models import Pipeline, PipelineTemplate
from ...services import template_export


class Command(BaseCommand):
    help = "Export a pipeline (by id or name) as template JSON, or a stored version with --template-version."

    def add_arguments(self, parser):
        parser.add_argument("pipeline", help="Pipeline id or name (template name with --template-version).")
        parser.add_argument("--project", help="Project slug, when the name is not unique.")
        parser.add_argument("--template-version", type=int, help="Export this stored template version instead.")
        parser.add_argument("-o", "--output", help="Write to this file instead of stdout.")

    def handle(self, *args, **options):
        ref = options["pipeline"]
        if options["template_version"]:
            template = PipelineTemplate.objects.filter(name=ref, version=options["template_version"]).first()
            if template is None:
                raise CommandError(
                    _("No template %(name)r version %(v)s.") % {"name": ref, "v": options["template_version"]}
                )
            body = template.body
        else:
            qs = Pipeline.objects.all()
            if options["project"]:
                qs = qs.filter(project__slug=options["project"])
            matches = list(qs.filter(pk=int(ref))) if ref.isdigit() else list(qs.filter(name=ref)[:2])
            if not matches:
                raise CommandError(_("No pipeline %(ref)r.") % {"ref": ref})
            if len(matches) > 1:
                raise CommandError(_("Several pipelines are named %(ref)r; give --project.") % {"ref": ref})
            body, _template = template_export(pipeline=matches[0], actor=builtin_operator())
        text = json.dumps(body, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
        if options["output"]:
            with open(options["output"], "w", encoding="utf-8") as fh:
                fh.write(text)
        else:
            self.stdout.write(text, ending="")
