"""Backfill: preview what running a pipeline over chosen input versions costs, and start it with --yes."""

import json

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext as _

from dataflare_portal.core.services import builtin_operator
from pipelines.models import Pipeline
from tasks.backfills import backfill_preview, backfill_start, template_versions

from .rerun import _named
from .run_pipeline import _lookup


class Command(BaseCommand):
    help = _(
        "Run a pipeline over chosen published versions of its input dataset: prints the cost preview (records, "
        "estimated tokens) and starts only with --yes."
    )

    def add_arguments(self, parser):
        parser.add_argument("pipeline", help=_("Pipeline id or name."))
        parser.add_argument(
            "--input-version",
            dest="versions",
            type=int,
            action="append",
            required=True,
            help=_("A version number of the input dataset (repeat for several)."),
        )
        parser.add_argument(
            "--first-record",
            type=int,
            default=None,
            help=_("First record of each version to read, counted from 1 (default: the first)."),
        )
        parser.add_argument(
            "--last-record",
            type=int,
            default=None,
            help=_("Last record of each version to read, counted from 1 and included (default: the last)."),
        )
        parser.add_argument(
            "--template-version",
            type=int,
            default=None,
            help=_("Run this version number of the pipeline's template instead of the current one."),
        )
        parser.add_argument("--parameters", default=None, help=_("Run parameters as a JSON object."))
        parser.add_argument("--yes", action="store_true", help=_("Start the runs after printing the preview."))

    def handle(self, *args, **opts):
        pipeline = _lookup(Pipeline, opts["pipeline"], _("pipeline"))
        parameters = None
        if opts["parameters"] is not None:
            try:
                parameters = json.loads(opts["parameters"])
            except ValueError as exc:
                raise CommandError(_("--parameters is not valid JSON: %(error)s") % {"error": exc}) from None
        template = None
        if opts["template_version"] is not None:
            versions = template_versions(pipeline)
            template = versions.filter(version=opts["template_version"]).first()
            if template is None:
                raise CommandError(
                    _("The template of pipeline %(p)s has no version %(v)d (its versions: %(all)s).")
                    % {
                        "p": pipeline,
                        "v": opts["template_version"],
                        "all": ", ".join(str(n) for n in versions.order_by("version").values_list("version", flat=True))
                        or "-",
                    }
                )
        chosen = {
            "pipeline": pipeline,
            "versions": opts["versions"],
            "first_record": opts["first_record"],
            "last_record": opts["last_record"],
            "template": template,
        }
        try:
            preview = backfill_preview(**chosen)
            template = preview["template"]
            span = preview["range"]
            if span:
                last = span["last"] if span["last"] is not None else _("the last")
                line = _("Only records %(first)s–%(last)s of each version.")
                self.stdout.write(line % {"first": span["first"], "last": last})
            self.stdout.write(
                _(
                    "Backfill of %(p)s over %(d)s versions %(v)s: %(r)s records; template %(t)s; estimated tokens "
                    "%(e)s (%(tpr)s per record from %(n)s recent runs)."
                )
                % {
                    "p": pipeline,
                    "d": preview["dataset"]["name"],
                    "v": ", ".join(str(v["version"]) for v in preview["versions"]),
                    "r": preview["records"],
                    "t": f"{template['name']} v{template['version']}" if template else "-",
                    "e": preview["estimated_tokens"] if preview["estimated_tokens"] is not None else "?",
                    "tpr": preview["tokens_per_record"] if preview["tokens_per_record"] is not None else "?",
                    "n": preview["history_runs"],
                }
            )
            if not opts["yes"]:
                self.stdout.write(_("Nothing started; add --yes to start."))
                return
            runs = backfill_start(**chosen, actor=builtin_operator(), parameters=parameters)
        except ValidationError as exc:
            raise CommandError(_named(exc)) from None
        for run in runs:
            self.stdout.write(
                _("Run %(id)s started (%(run)s) on version %(v)s.")
                % {"id": run.pk, "run": run, "v": run.trigger["version"]["version"]}
            )
