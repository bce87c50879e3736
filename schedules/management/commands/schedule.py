"""`manage.py schedule list|create|pause|resume|preview|tick`: the schedule services from the command line."""

import json

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext as _

from dataflare_portal.core.services import builtin_operator
from pipelines.models import Pipeline
from schedules.models import Schedule
from schedules.services import (
    schedule_pause,
    schedule_preview,
    schedule_resume,
    schedule_save,
    schedules_tick,
)


def _pipeline(ref: str) -> Pipeline:
    qs = Pipeline.objects.all()
    obj = qs.filter(pk=int(ref)).first() if ref.isdigit() else None
    if obj is None:
        matches = list(qs.filter(name=ref)[:2])
        if len(matches) > 1:
            raise CommandError(_("More than one pipeline is named %(name)r; use its id.") % {"name": ref})
        obj = matches[0] if matches else None
    if obj is None:
        raise CommandError(_("No pipeline %(ref)r.") % {"ref": ref})
    return obj


def _schedule(ref: str) -> Schedule:
    if not ref.isdigit():
        raise CommandError(_("Give the schedule's id (see `schedule list`)."))
    obj = Schedule.objects.select_related("pipeline").filter(pk=int(ref)).first()
    if obj is None:
        raise CommandError(_("No schedule %(ref)r.") % {"ref": ref})
    return obj


def _errors(exc: ValidationError) -> str:
    if hasattr(exc, "error_dict"):
        return "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
    return "; ".join(exc.messages)


class Command(BaseCommand):
    help = _("List, create, pause, resume and preview schedules; `tick` fires what is due now.")

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("list", help=_("List the schedules."))
        create = sub.add_parser("create", help=_("Create a schedule of a pipeline."))
        create.add_argument("pipeline", help=_("Pipeline id or name."))
        create.add_argument("name")
        when = create.add_mutually_exclusive_group(required=True)
        when.add_argument("--cron", help=_("Cron expression, e.g. '0 2 * * *'."))
        when.add_argument("--every", type=int, help=_("Interval in seconds."))
        create.add_argument("--timezone", default="UTC", help=_("IANA time zone of the cron expression."))
        create.add_argument("--overlap", default="skip", choices=["skip", "queue", "parallel"])
        create.add_argument("--catchup", default="latest", choices=["none", "latest", "all"])
        create.add_argument("--catchup-limit", type=int, default=10)
        create.add_argument("--parameters", default="{}", help=_("Run parameters as a JSON object."))
        create.add_argument("--paused", action="store_true", help=_("Create it paused."))
        for name in ("pause", "resume", "preview"):
            p = sub.add_parser(name)
            p.add_argument("schedule", help=_("Schedule id."))
        sub.add_parser("tick", help=_("Fire the due slots now (what beat's schedules.tick does)."))

    def handle(self, *args, **opts):
        action = opts["action"]
        if action == "list":
            for s in Schedule.objects.select_related("pipeline").order_by("pipeline__name", "name")[:1000]:
                when = f"cron '{s.cron}' {s.timezone}" if s.kind == "cron" else f"every {s.interval_seconds}s"
                state = _("enabled") if s.enabled else _("paused")
                nxt = s.next_fire_at.isoformat() if s.next_fire_at and s.enabled else "-"
                self.stdout.write(
                    f"{s.pk}\t{s.pipeline.name}\t{s.name}\t{when}\t{state}\t{s.overlap}/{s.catchup}\t"
                    f"next={nxt}\tlast={s.last_outcome or '-'}"
                )
        elif action == "create":
            self._create(opts)
        elif action == "pause":
            s = schedule_pause(schedule=_schedule(opts["schedule"]), actor=builtin_operator())
            self.stdout.write(_("Paused schedule %(s)s.") % {"s": s})
        elif action == "resume":
            s = schedule_resume(schedule=_schedule(opts["schedule"]), actor=builtin_operator())
            self.stdout.write(_("Resumed schedule %(s)s.") % {"s": s})
        elif action == "preview":
            self._preview(_schedule(opts["schedule"]))
        elif action == "tick":
            self.stdout.write(json.dumps(schedules_tick(), sort_keys=True))

    def _create(self, opts):
        try:
            parameters = json.loads(opts["parameters"])
        except ValueError as exc:
            raise CommandError(_("--parameters is not valid JSON: %(error)s") % {"error": exc}) from None
        schedule = Schedule(
            pipeline=_pipeline(opts["pipeline"]),
            name=opts["name"],
            enabled=not opts["paused"],
            kind="cron" if opts["cron"] is not None else "interval",
            cron=opts["cron"] or "",
            timezone=opts["timezone"],
            interval_seconds=opts["every"],
            overlap=opts["overlap"],
            catchup=opts["catchup"],
            catchup_limit=opts["catchup_limit"],
            parameters=parameters,
        )
        try:
            schedule = schedule_save(schedule=schedule, actor=builtin_operator())
        except ValidationError as exc:
            raise CommandError(_errors(exc)) from None
        self.stdout.write(_("Created schedule %(id)s (%(s)s).") % {"id": schedule.pk, "s": schedule})
        self._preview(schedule)

    def _preview(self, schedule: Schedule):
        from zoneinfo import ZoneInfo

        zone = ZoneInfo(schedule.timezone)
        self.stdout.write(_("Next 5 fire times:"))
        for t in schedule_preview(schedule=schedule):
            self.stdout.write(f"  {t.astimezone(zone).isoformat()}  ({t.isoformat()})")
