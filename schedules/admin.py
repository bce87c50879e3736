"""Admin of schedules and dataset triggers; it also adds the next run time and the last scheduled outcome to the
pipeline list and page (pipelines may not import schedules, DESIGN's import direction)."""

from zoneinfo import ZoneInfo

from django.contrib import admin, messages
from django.db.models import OuterRef, Q, Subquery
from django.db.models.aggregates import Min
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from dataflare_portal.core.admin_base import PortalModelAdmin, badge_column, status_badge
from pipelines.models import Pipeline

from .choices import FireOutcome
from .models import DatasetTrigger, Schedule, ScheduleFire, TriggerFire
from .services import schedule_pause, schedule_preview, schedule_resume, schedule_save, trigger_save

RECENT_FIRES = 20


def _when(dt, zone: str | None = None) -> str:
    if dt is None:
        return "-"
    local = dt.astimezone(ZoneInfo(zone)) if zone else timezone.localtime(dt)
    return f"{date_format(local, 'Y-m-d H:i:s')} {local.tzname()}"


def preview_text(schedule: Schedule) -> str:
    """'Next 5 fire times: ...' in the schedule's time zone (with UTC beside a zone that is not UTC)."""
    times = schedule_preview(schedule=schedule)
    if not times:
        return gettext("This schedule has no future fire times.")
    shown = []
    for t in times:
        text = _when(t, schedule.timezone)
        if schedule.timezone != "UTC":
            text += f" ({_when(t, 'UTC')})"
        shown.append(text)
    return gettext("Next 5 fire times:") + " " + "; ".join(shown)


class _Fires(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description=_("outcome"))
    def outcome_badge(self, obj):
        return status_badge(obj.outcome, obj.get_outcome_display())

    @admin.display(description=_("reason"))
    def reason_text(self, obj):
        return obj.reason or "-"

    @admin.display(description=_("run"))
    def run_link(self, obj):
        if not obj.run_id:
            return "-"
        from django.urls import reverse

        return format_html('<a href="{}">{}</a>', reverse("tasks:run-detail", args=[obj.run_id]), obj.run_id)


class ScheduleFireInline(_Fires):
    model = ScheduleFire
    fields = ["slot", "outcome_badge", "reason_text", "run_link", "started_at"]
    readonly_fields = fields
    verbose_name_plural = _("recent fires")

    def get_queryset(self, request):
        # The newest fires only: a minutely schedule has half a million rows a year.
        qs = super().get_queryset(request).select_related(None)
        schedule_id = request.resolver_match.kwargs.get("object_id") if request.resolver_match else None
        cutoff = (
            ScheduleFire.objects.filter(schedule_id=schedule_id)
            .order_by("-slot")
            .values_list("slot", flat=True)[RECENT_FIRES - 1 : RECENT_FIRES]
            if schedule_id and str(schedule_id).isdigit()
            else []
        )
        cutoff = list(cutoff)
        return qs.filter(slot__gte=cutoff[0]) if cutoff else qs


class TriggerFireInline(_Fires):
    model = TriggerFire
    fields = ["dataset_version", "outcome_badge", "reason_text", "run_link", "created_at"]
    readonly_fields = fields
    verbose_name_plural = _("recent fires")

    def get_queryset(self, request):
        qs = super().get_queryset(request).select_related("dataset_version__dataset")
        trigger_id = request.resolver_match.kwargs.get("object_id") if request.resolver_match else None
        if not (trigger_id and str(trigger_id).isdigit()):
            return qs
        recent = list(
            TriggerFire.objects.filter(trigger_id=trigger_id)
            .order_by("-created_at")
            .values_list("pk", flat=True)[:RECENT_FIRES]
        )
        return qs.filter(pk__in=recent)


@admin.action(description=_("Pause selected schedules"), permissions=["change"])
def pause_schedules(modeladmin, request, queryset):
    n = 0
    for schedule in queryset:
        if schedule.enabled:
            schedule_pause(schedule=schedule, actor=request.user)
            n += 1
    modeladmin.message_user(request, gettext("Paused %(n)d schedule(s).") % {"n": n}, messages.SUCCESS)


@admin.action(description=_("Resume selected schedules"), permissions=["change"])
def resume_schedules(modeladmin, request, queryset):
    n = 0
    for schedule in queryset:
        if not schedule.enabled:
            schedule_resume(schedule=schedule, actor=request.user)
            n += 1
    modeladmin.message_user(request, gettext("Resumed %(n)d schedule(s).") % {"n": n}, messages.SUCCESS)


@admin.register(Schedule)
class ScheduleAdmin(PortalModelAdmin):
    """Schedules: cron (with a time zone) or interval, policies, run parameters; the next 5 fire times on save."""

    list_display = [
        "name",
        "pipeline",
        "enabled",
        "timing",
        "overlap",
        "catchup",
        "next_fire_local",
        badge_column("last_outcome", _("last outcome")),
    ]
    list_filter = ["enabled", "kind", "overlap", "catchup"]
    list_select_related = ["pipeline"]
    search_fields = ["name", "pipeline__name"]
    autocomplete_fields = ["pipeline"]
    readonly_fields = ["next_fire_local", "last_slot", "last_outcome", "last_fired_at", "created_by", "preview"]
    fieldsets = (
        (None, {"fields": ("pipeline", "name", "enabled")}),
        (_("When"), {"fields": ("kind", "cron", "timezone", "interval_seconds", "anchor_at", "preview")}),
        (_("Policies"), {"fields": ("overlap", "catchup", "catchup_limit")}),
        (_("Run parameters"), {"fields": ("parameters",)}),
        (_("State"), {"fields": ("next_fire_local", "last_slot", "last_outcome", "last_fired_at", "created_by")}),
    )
    inlines = [ScheduleFireInline]
    actions = [pause_schedules, resume_schedules]

    @admin.display(description=_("when"))
    def timing(self, obj):
        if obj.kind == "cron":
            return f"{obj.cron} ({obj.timezone})"
        return gettext("every %(n)s s") % {"n": obj.interval_seconds}

    @admin.display(description=_("next fire time"), ordering="next_fire_at")
    def next_fire_local(self, obj):
        if not obj.enabled:
            return gettext("paused")
        return _when(obj.next_fire_at, obj.timezone)

    @admin.display(description=_("next 5 fire times"))
    def preview(self, obj):
        if obj is None or obj.pk is None:
            return gettext("Shown once the schedule is saved.")
        try:
            times = schedule_preview(schedule=obj)
        except Exception:
            return "-"
        return format_html(
            "<ol>{}</ol>", format_html_join("", "<li>{}</li>", ((_when(t, obj.timezone),) for t in times))
        )

    def save_model(self, request, obj, form, change):
        schedule_save(schedule=obj, actor=request.user)
        self.message_user(request, preview_text(obj), messages.INFO)


@admin.register(DatasetTrigger)
class DatasetTriggerAdmin(PortalModelAdmin):
    """Dataset triggers: a published version of the dataset starts the pipeline once, reading that version."""

    list_display = ["dataset", "pipeline", "enabled", "created_at"]
    list_filter = ["enabled"]
    list_select_related = ["dataset", "pipeline"]
    search_fields = ["dataset__name", "pipeline__name"]
    autocomplete_fields = ["pipeline", "dataset"]
    readonly_fields = ["created_at", "created_by"]
    fields = ["pipeline", "dataset", "enabled", "parameters", "created_at", "created_by"]
    inlines = [TriggerFireInline]

    def save_model(self, request, obj, form, change):
        trigger_save(trigger=obj, actor=request.user)


# ---- the pipeline list and page: next run time and last scheduled outcome -------------------------------
@admin.display(description=_("next scheduled run"))
def next_scheduled_run(obj):
    return _when(getattr(obj, "df_next_run", None))


@admin.display(description=_("last scheduled outcome"))
def last_scheduled_outcome(obj):
    outcome = getattr(obj, "df_last_outcome", None)
    if not outcome:
        return "-"
    return status_badge(outcome, FireOutcome(outcome).label)


def _annotated(get_queryset):
    def wrapped(request):
        last = ScheduleFire.objects.filter(schedule__pipeline=OuterRef("pk")).order_by("-slot").values("outcome")[:1]
        return get_queryset(request).annotate(
            df_next_run=Min("schedules__next_fire_at", filter=Q(schedules__enabled=True)),
            df_last_outcome=Subquery(last),
        )

    return wrapped


def _pipeline_schedules_text(pipeline) -> list[tuple[str, str, str]]:
    rows = []
    for s in Schedule.objects.filter(pipeline=pipeline).order_by("name")[:20]:
        state = _when(s.next_fire_at, s.timezone) if s.enabled else gettext("paused")
        rows.append((s.name, state, s.get_last_outcome_display() or "-"))
    return rows


@admin.display(description=_("schedules"))
def pipeline_schedules(obj):
    if obj is None or obj.pk is None:
        return "-"
    rows = _pipeline_schedules_text(obj)
    if not rows:
        return gettext("No schedule.")
    items = (
        format_html(
            "<li>{}: {}</li>",
            name,
            gettext("next %(when)s, last outcome %(outcome)s") % {"when": when, "outcome": outcome},
        )
        for name, when, outcome in rows
    )
    return format_html("<ul>{}</ul>", format_html_join("", "{}", ((item,) for item in items)))


_pipeline_admin = admin.site._registry.get(Pipeline)
if _pipeline_admin is not None and next_scheduled_run not in _pipeline_admin.list_display:
    _pipeline_admin.list_display = (*_pipeline_admin.list_display, next_scheduled_run, last_scheduled_outcome)
    _pipeline_admin.get_queryset = _annotated(_pipeline_admin.get_queryset)
    _pipeline_admin.pipeline_schedules = (
        pipeline_schedules  # an instance attribute: called as is, and keeps its description
    )
    _pipeline_admin.readonly_fields = (*_pipeline_admin.readonly_fields, "pipeline_schedules")
    _pipeline_admin.fieldsets = (
        *_pipeline_admin.fieldsets,
        (_("Schedules"), {"fields": ("pipeline_schedules",)}),
    )
