"""Start a pipeline run; with --wait, follow it with a progress bar and exit non-zero unless it succeeds."""

import json
import sys
import time

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext as _

from catalog.models import Dataset
from dataflare_portal.core.services import builtin_operator
from pipelines.models import Pipeline
from tasks.choices import RunStatus
from tasks.reasons import run_reason, run_waits_for_a_person
from tasks.selectors import run_progress
from tasks.services import run_start

# Exit codes of --wait: 0 succeeded, 1 failed/crashed/cancelled, 2 --timeout, 3 waiting for a person
# (QC review): the run goes on, but nothing will change until someone acts.
EXIT_WAITING = 3


def _lookup(model, ref: str, label: str):
    qs = model.objects.all()
    obj = qs.filter(pk=int(ref)).first() if ref.isdigit() else None
    if obj is None:
        matches = list(qs.filter(name=ref)[:2])
        if len(matches) > 1:
            raise CommandError(
                _("More than one %(what)s is named %(name)r; use its id.") % {"what": label, "name": ref}
            )
        obj = matches[0] if matches else None
    if obj is None:
        raise CommandError(_("No %(what)s %(ref)r.") % {"what": label, "ref": ref})
    return obj


def render_bar(progress: dict, width: int = 30) -> str:
    """One line: overall bar, then per-stage percent, records in/out and rate."""
    stages = progress["stages"]
    overall = sum(s["percent"] for s in stages) / len(stages) if stages else 0.0
    filled = int(width * overall / 100)
    parts = " ".join(f"{s['key']}:{s['percent']:.0f}%" for s in stages)
    rate = progress["records_per_second"]
    rate_text = "-" if rate is None else f"{rate:,.0f}"
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {overall:5.1f}% {progress['status']:<10} "
        f"in {progress['records_in']:,} out {progress['records_out']:,} "
        f"{rate_text} rec/s  {parts}"
    )


class Command(BaseCommand):
    help = _("Start a run of a pipeline (by id or name); --wait follows it and sets the exit code.")

    def add_arguments(self, parser):
        parser.add_argument("pipeline", help=_("Pipeline id or name."))
        parser.add_argument(
            "--input", dest="input_dataset", help=_("Input dataset id or name (default: the pipeline's).")
        )
        parser.add_argument("--idempotency-key", default=None)
        parser.add_argument(
            "--parameters",
            default=None,
            help=_('Run parameters as a JSON object, e.g. \'{"lang": "zh", "min_length": 20}\'.'),
        )
        parser.add_argument(
            "--wait",
            action="store_true",
            help=_("Wait for the run to finish; exit 1 unless it succeeds, 3 when it waits for a person (QC review)."),
        )
        parser.add_argument("--progress", action="store_true", help=_("Show a progress bar while waiting."))
        parser.add_argument(
            "--timeout", type=float, default=0, help=_("Give up waiting after this many seconds (0: never).")
        )
        parser.add_argument("--interval", type=float, default=0.5)

    def handle(self, *args, **opts):
        pipeline = _lookup(Pipeline, opts["pipeline"], _("pipeline"))
        dataset = _lookup(Dataset, opts["input_dataset"], _("dataset")) if opts["input_dataset"] else None
        parameters = None
        if opts["parameters"] is not None:
            try:
                parameters = json.loads(opts["parameters"])
            except ValueError as exc:
                raise CommandError(_("--parameters is not valid JSON: %(error)s") % {"error": exc}) from None
        try:
            run = run_start(
                pipeline=pipeline,
                actor=builtin_operator(),
                input_dataset=dataset,
                idempotency_key=opts["idempotency_key"],
                parameters=parameters,
            )
        except ValidationError as exc:
            if hasattr(exc, "error_dict"):
                raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from None
            raise CommandError("; ".join(exc.messages)) from None
        self.stdout.write(_("Run %(id)s started (%(run)s).") % {"id": run.pk, "run": run})
        if not (opts["wait"] or opts["progress"]):
            return
        deadline = time.monotonic() + opts["timeout"] if opts["timeout"] else None
        tty = opts["progress"]
        while True:
            run.refresh_from_db()
            if tty:
                self.stdout.write("\r" + render_bar(run_progress(run)), ending="")
                self.stdout.flush()
            if run.status in RunStatus.terminal() or run_waits_for_a_person(run):
                break
            if deadline and time.monotonic() > deadline:
                if tty:
                    self.stdout.write("")
                self.stderr.write(
                    _("Timed out waiting; the run goes on (%(s)s). %(reason)s")
                    % {"s": run.status, "reason": run_reason(run)}
                )
                sys.exit(2)
            time.sleep(opts["interval"])
        if tty:
            self.stdout.write("")
        self.stdout.write(
            _("Run %(id)s %(status)s: %(i)s records in, %(o)s out, %(f)s filtered, %(q)s quarantined. %(reason)s")
            % {
                "id": run.pk,
                "status": run.status,
                "i": run.records_in,
                "o": run.records_out,
                "f": run.records_filtered,
                "q": run.records_failed,
                "reason": run_reason(run),
            }
        )
        if run_waits_for_a_person(run):
            sys.exit(EXIT_WAITING)
        if run.status != RunStatus.SUCCEEDED:
            sys.exit(1)
