"""Re-run part of a finished run: from a chosen stage, reusing the checkpointed outputs of the stages before it."""

import uuid

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext as _

from dataflare_portal.core.services import builtin_operator
from tasks.models import TaskRun
from tasks.reruns import run_reprocess_quarantined, run_rerun_from_stage


def _named(exc: ValidationError) -> str:
    if hasattr(exc, "error_dict"):
        return "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
    return "; ".join(exc.messages)


class Command(BaseCommand):
    help = _(
        "Re-run a finished run from a stage (reusing the checkpointed outputs of the stages before it), or "
        "reprocess the records it quarantined."
    )

    def add_arguments(self, parser):
        parser.add_argument("run", help=_("Id of the finished run."))
        what = parser.add_mutually_exclusive_group(required=True)
        what.add_argument("--from-stage", metavar="STAGE", help=_("Key of the stage to start from (e.g. dedup)."))
        what.add_argument(
            "--quarantined", action="store_true", help=_("Reprocess only the records the run quarantined.")
        )
        parser.add_argument(
            "--stage",
            metavar="STAGE",
            help=_("With --quarantined: the stage whose records to reprocess (when there are several)."),
        )

    def handle(self, *args, **opts):
        try:
            run = TaskRun.objects.get(pk=uuid.UUID(opts["run"]))
        except (ValueError, TaskRun.DoesNotExist):
            raise CommandError(_("No run %(ref)r.") % {"ref": opts["run"]}) from None
        try:
            if opts["quarantined"]:
                new = run_reprocess_quarantined(run=run, stage=opts["stage"], actor=builtin_operator())
            else:
                new = run_rerun_from_stage(run=run, stage=opts["from_stage"], actor=builtin_operator())
        except ValidationError as exc:
            raise CommandError(_named(exc)) from None
        if opts["quarantined"]:
            self.stdout.write(
                _("Run %(id)s started (%(run)s): %(n)s quarantined record(s) from stage %(stage)s.")
                % {"id": new.pk, "run": new, "n": new.trigger["records"], "stage": new.trigger["stage"]}
            )
            return
        self.stdout.write(
            _("Run %(id)s started (%(run)s) from stage %(stage)s; reused: %(reused)s.")
            % {
                "id": new.pk,
                "run": new,
                "stage": opts["from_stage"],
                "reused": ", ".join(new.stage_runs.filter(status="succeeded").values_list("key", flat=True)),
            }
        )
