"""Admin for the metrics tables: read-only (rows come from workers and the rollup), no full COUNT."""

from django.contrib import admin

from dataflare_portal.core.admin_base import BigTableAdmin

from .models import BatchEvent, MetricsStatusSummary, MetricsSummary, RollupWatermark, TokenUsage


class ReadOnlyBigTableAdmin(BigTableAdmin):
    """Metrics rows are written by services only; the admin shows them."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(TokenUsage)
class TokenUsageAdmin(ReadOnlyBigTableAdmin):
    list_display = [
        "ts",
        "project_id",
        "pipeline_id",
        "stage_template",
        "model_name",
        "model_version",
        "status_code",
        "requests",
        "prompt_tokens",
        "completion_tokens",
        "retry_tokens",
    ]
    list_filter = ["status_code"]
    date_hierarchy = None


@admin.register(BatchEvent)
class BatchEventAdmin(ReadOnlyBigTableAdmin):
    list_display = [
        "ts",
        "project_id",
        "pipeline_id",
        "stage_template",
        "records_in",
        "records_out",
        "records_failed",
        "duration_ms",
        "succeeded",
    ]
    list_filter = ["succeeded"]


@admin.register(MetricsSummary)
class MetricsSummaryAdmin(ReadOnlyBigTableAdmin):
    list_display = [
        "granularity",
        "bucket",
        "project_id",
        "pipeline_id",
        "stage_template",
        "model_version",
        "records_in",
        "records_failed",
        "requests",
        "prompt_tokens",
        "completion_tokens",
    ]
    list_filter = ["granularity"]


@admin.register(MetricsStatusSummary)
class MetricsStatusSummaryAdmin(ReadOnlyBigTableAdmin):
    list_display = ["granularity", "bucket", "project_id", "model_version", "status_code", "requests"]
    list_filter = ["granularity"]


@admin.register(RollupWatermark)
class RollupWatermarkAdmin(admin.ModelAdmin):
    list_display = ["granularity", "rolled_until", "last_batch_event_id", "last_token_usage_id", "updated_at"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
