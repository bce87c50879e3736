"""Admin of the tasks app. The QC review queue admin lives in admin_review.py."""

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from dataflare_portal.core.admin_base import BigTableAdmin, PortalModelAdmin, badge_column
from pipelines.models import Pipeline
from pipelines.stagekinds.registry import registry as stage_kinds

from .admin_actions import (
    run_backfill_action,
    run_cancel_action,
    run_pipeline_action,
    run_reprocess_quarantined_action,
    run_rerun_action,
    run_resume_action,
    run_retry_action,
    run_task_again_action,
)
from .models import Batch, QuarantinedRecord, RunEvent, StageRun, Task, TaskRun, WorkerHeartbeat

try:
    from . import admin_review  # noqa: F401 - registers the QC review queue and lots
except ImportError:
    pass

# "Run" belongs on the pipeline list, but pipelines may not import tasks (DESIGN's import
# direction), so the engine attaches its action to the already registered PipelineAdmin.
_pipeline_admin = admin.site._registry.get(Pipeline)
if _pipeline_admin is not None and run_pipeline_action not in _pipeline_admin.actions:
    _pipeline_admin.actions = [*_pipeline_admin.actions, run_pipeline_action]
if _pipeline_admin is not None and run_backfill_action not in _pipeline_admin.actions:
    _pipeline_admin.actions = [*_pipeline_admin.actions, run_backfill_action]


class StageKindFilter(admin.SimpleListFilter):
    """Stage runs by kind, named by the kinds' labels; the choices come from the registry, not a DISTINCT
    over the (big) stage-run table."""

    title = _("kind")
    parameter_name = "kind"

    def lookups(self, request, model_admin):
        return [(kind.name, str(kind.label)) for kind in stage_kinds.kinds()]

    def queryset(self, request, queryset):
        return queryset.filter(kind=self.value()) if self.value() else queryset


class ReadOnlyMixin:
    """Engine state is written by the engine only; the admin shows it and offers actions."""

    # Links from the run page filter by stage run / run id.
    allowed_lookups = ("stage_run__id__exact", "stage_run__run__id__exact", "run__id__exact", "batch__id__exact")

    def lookup_allowed(self, lookup, value, request=None):
        return lookup in self.allowed_lookups or super().lookup_allowed(lookup, value, request)

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return request.method in ("GET", "HEAD") or request.POST.get("action") is not None

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Task)
class TaskAdmin(PortalModelAdmin):
    list_display = ["name", "project", "pipeline", "input_dataset", "created_at"]
    list_filter = ["project"]
    list_select_related = ["project", "pipeline", "input_dataset"]
    search_fields = ["name"]
    raw_id_fields = ["pipeline", "input_dataset", "project"]
    readonly_fields = ["created_at", "created_by"]
    actions = [run_task_again_action]


class StageRunInline(admin.TabularInline):
    model = StageRun
    fields = [
        "position",
        "key",
        "kind_label",
        "status",
        "batches_done",
        "total_batches",
        "records_in",
        "records_out",
        "records_filtered",
        "records_failed",
        "last_error",
    ]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False

    @admin.display(description=_("kind"))
    def kind_label(self, obj):
        return stage_kinds.label_of(obj.kind)


@admin.register(TaskRun)
class TaskRunAdmin(ReadOnlyMixin, BigTableAdmin):
    list_display = [
        "__str__",
        "live",
        "status_col",
        "pipeline",
        "project",
        "records_in",
        "records_out",
        "records_failed",
        "created_at",
        "finished_at",
    ]
    list_filter = ["status", "project", "pipeline"]
    list_select_related = ["task", "pipeline", "project"]
    date_hierarchy = "created_at"
    search_fields = ["=id", "task__name", "idempotency_key"]
    raw_id_fields = [
        "task",
        "project",
        "pipeline",
        "template",
        "input_version",
        "output_version",
        "created_by",
        "rerun_of",
    ]
    inlines = [StageRunInline]
    actions = [
        run_cancel_action,
        run_retry_action,
        run_resume_action,
        run_rerun_action,
        run_reprocess_quarantined_action,
    ]
    status_col = badge_column("status", _("status"))

    @admin.display(description=_("live"))
    def live(self, obj):
        return format_html('<a href="{}">{}</a>', reverse("tasks:run-detail", args=[obj.pk]), _("progress"))


@admin.register(StageRun)
class StageRunAdmin(ReadOnlyMixin, BigTableAdmin):
    list_display = [
        "__str__",
        "key",
        "kind_label",
        "status_col",
        "batches_done",
        "total_batches",
        "records_in",
        "records_out",
        "records_filtered",
        "records_failed",
    ]
    list_filter = ["status", StageKindFilter]
    list_select_related = ["run"]

    @admin.display(description=_("kind"), ordering="kind")
    def kind_label(self, obj):
        return stage_kinds.label_of(obj.kind)

    raw_id_fields = ["run", "stage"]
    status_col = badge_column("status", _("status"))


@admin.register(Batch)
class BatchAdmin(ReadOnlyMixin, BigTableAdmin):
    list_display = [
        "__str__",
        "index",
        "status_col",
        "attempt",
        "failures",
        "crashes",
        "lease_owner",
        "records_in",
        "records_out",
        "duration_ms",
        "error",
    ]
    list_filter = ["status"]
    list_select_related = ["stage_run"]
    raw_id_fields = ["stage_run"]
    search_fields = ["=id", "lease_owner"]
    status_col = badge_column("status", _("status"))


@admin.register(QuarantinedRecord)
class QuarantinedRecordAdmin(ReadOnlyMixin, BigTableAdmin):
    list_display = ["batch_ref", "record_index", "code", "reason", "created_at"]
    list_filter = ["code"]
    list_select_related = ["batch", "stage_run"]
    raw_id_fields = ["stage_run", "batch"]
    search_fields = ["code", "reason"]

    @admin.display(description=_("batch"))
    def batch_ref(self, obj):
        return f"{obj.stage_run.key}#{obj.batch.index} ({_('attempt')} {obj.attempt})"


@admin.register(RunEvent)
class RunEventAdmin(ReadOnlyMixin, BigTableAdmin):
    """Run events as recorded by the engine (what project webhooks receive)."""

    list_display = ["at", "kind", "run", "sequence", "project"]
    list_filter = ["kind", "project"]
    list_select_related = ["run__task", "project"]
    raw_id_fields = ["run", "project"]
    date_hierarchy = "at"


@admin.register(WorkerHeartbeat)
class WorkerHeartbeatAdmin(ReadOnlyMixin, PortalModelAdmin):
    list_display = ["name", "hostname", "pid", "last_seen_at", "batches_done"]
