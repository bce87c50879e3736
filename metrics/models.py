"""Metrics: raw events written by workers, and the rollups the dashboard reads.

Dimension columns are plain ids, not foreign keys: raw tables take millions of rows a day and
metrics depends on no app that writes them (tasks pushes events here).

Latency is kept as a fixed histogram (counter columns with the bounds in LATENCY_BOUNDS_MS) on
both raw events and rollups, so percentiles merge across buckets by summing counters.
"""

from django.db import models
from django.utils.translation import gettext_lazy as _

from .choices import Granularity

# Upper bounds (ms, inclusive) of the latency histogram; the last counter holds everything above.
LATENCY_BOUNDS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
LATENCY_FIELDS = tuple(f"lat_le_{b}" for b in LATENCY_BOUNDS_MS) + ("lat_inf",)


class RawLatencyHistogram(models.Model):
    """Abstract: latency histogram counters of one raw event (names in LATENCY_FIELDS)."""

    lat_le_5 = models.IntegerField("≤ 5 ms", default=0, editable=False)
    lat_le_10 = models.IntegerField("≤ 10 ms", default=0, editable=False)
    lat_le_25 = models.IntegerField("≤ 25 ms", default=0, editable=False)
    lat_le_50 = models.IntegerField("≤ 50 ms", default=0, editable=False)
    lat_le_100 = models.IntegerField("≤ 100 ms", default=0, editable=False)
    lat_le_250 = models.IntegerField("≤ 250 ms", default=0, editable=False)
    lat_le_500 = models.IntegerField("≤ 500 ms", default=0, editable=False)
    lat_le_1000 = models.IntegerField("≤ 1000 ms", default=0, editable=False)
    lat_le_2500 = models.IntegerField("≤ 2500 ms", default=0, editable=False)
    lat_le_5000 = models.IntegerField("≤ 5000 ms", default=0, editable=False)
    lat_le_10000 = models.IntegerField("≤ 10000 ms", default=0, editable=False)
    lat_inf = models.IntegerField("> 10000 ms", default=0, editable=False)

    class Meta:
        abstract = True


class LatencyHistogram(models.Model):
    """Abstract: the latency histogram counter columns (names in LATENCY_FIELDS)."""

    lat_le_5 = models.BigIntegerField("≤ 5 ms", default=0, editable=False)
    lat_le_10 = models.BigIntegerField("≤ 10 ms", default=0, editable=False)
    lat_le_25 = models.BigIntegerField("≤ 25 ms", default=0, editable=False)
    lat_le_50 = models.BigIntegerField("≤ 50 ms", default=0, editable=False)
    lat_le_100 = models.BigIntegerField("≤ 100 ms", default=0, editable=False)
    lat_le_250 = models.BigIntegerField("≤ 250 ms", default=0, editable=False)
    lat_le_500 = models.BigIntegerField("≤ 500 ms", default=0, editable=False)
    lat_le_1000 = models.BigIntegerField("≤ 1000 ms", default=0, editable=False)
    lat_le_2500 = models.BigIntegerField("≤ 2500 ms", default=0, editable=False)
    lat_le_5000 = models.BigIntegerField("≤ 5000 ms", default=0, editable=False)
    lat_le_10000 = models.BigIntegerField("≤ 10000 ms", default=0, editable=False)
    lat_inf = models.BigIntegerField("> 10000 ms", default=0, editable=False)

    class Meta:
        abstract = True


class TokenUsage(RawLatencyHistogram):
    """Raw event: one group of model calls of one batch with one outcome (the PRD's tokens_usage)."""

    id = models.BigAutoField(primary_key=True)
    ts = models.DateTimeField(_("time"), db_index=True)
    project_id = models.BigIntegerField(_("project"))
    pipeline_id = models.BigIntegerField(_("pipeline"), null=True, blank=True)
    run_id = models.UUIDField(_("run"), null=True, blank=True)
    stage_template = models.CharField(_("stage template"), max_length=50, blank=True)
    model_name = models.CharField(_("model"), max_length=100)
    model_version = models.CharField(_("model version"), max_length=50, blank=True)
    status_code = models.CharField(_("status"), max_length=32, default="OK")
    requests = models.IntegerField(_("requests"), default=1)
    records = models.IntegerField(_("records"), default=0)
    prompt_tokens = models.BigIntegerField(_("prompt tokens"), default=0)
    completion_tokens = models.BigIntegerField(_("completion tokens"), default=0)
    # The part of prompt + completion tokens spent on calls made again (an earlier attempt's answer was lost).
    retry_tokens = models.BigIntegerField(_("retry tokens"), default=0)
    latency_ms_sum = models.FloatField(_("latency sum (ms)"), default=0)
    latency_ms_max = models.FloatField(_("latency max (ms)"), default=0)
    # Calls through the portal's OpenAI-compatible gateway: the API key's id (gateway app); null for pipelines.
    gateway_key_id = models.BigIntegerField(_("gateway key"), null=True, blank=True)

    class Meta:
        db_table = "tokens_usage"
        ordering = ["-ts"]
        verbose_name = _("token usage event")
        verbose_name_plural = _("token usage events")
        # A key's token budget sums its events of the period (gateway.services.key_budget_check).
        indexes = [models.Index(fields=["gateway_key_id", "ts"], name="tokens_usage_gwkey_ts_idx")]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(requests__gte=0, prompt_tokens__gte=0, completion_tokens__gte=0),
                name="%(app_label)s_%(class)s_non_negative",
                violation_error_message=_("Requests and token counts cannot be negative."),
            )
        ]

    def __str__(self) -> str:
        return f"{self.ts:%Y-%m-%d %H:%M} {self.model_name} {self.status_code}"


class BatchEvent(models.Model):
    """Raw event: one finished batch attempt (records in/out/filtered/failed, duration)."""

    id = models.BigAutoField(primary_key=True)
    ts = models.DateTimeField(_("time"), db_index=True)
    project_id = models.BigIntegerField(_("project"))
    pipeline_id = models.BigIntegerField(_("pipeline"), null=True, blank=True)
    run_id = models.UUIDField(_("run"), null=True, blank=True)
    stage_template = models.CharField(_("stage template"), max_length=50, blank=True)
    # '' for stages without a model; inference stages may pass theirs so model filters cover them.
    model_version = models.CharField(_("model version"), max_length=50, blank=True, default="")
    records_in = models.IntegerField(_("records in"), default=0)
    records_out = models.IntegerField(_("records out"), default=0)
    records_filtered = models.IntegerField(_("records filtered"), default=0)
    records_failed = models.IntegerField(_("records failed"), default=0)
    duration_ms = models.FloatField(_("duration (ms)"), default=0)
    succeeded = models.BooleanField(_("succeeded"), default=True)

    class Meta:
        db_table = "batch_events"
        ordering = ["-ts"]
        verbose_name = _("batch event")
        verbose_name_plural = _("batch events")
        constraints = [
            models.CheckConstraint(
                condition=models.Q(records_in__gte=0, records_out__gte=0, records_failed__gte=0),
                name="%(app_label)s_%(class)s_non_negative",
                violation_error_message=_("Record counts cannot be negative."),
            )
        ]

    def __str__(self) -> str:
        return f"{self.ts:%Y-%m-%d %H:%M} {self.stage_template}"


# Columns of a rollup row filled from batch events and from token usage events; each upsert
# writes only its own group, so both sources share one row per bucket and dimension key.
BATCH_SUM_FIELDS = (
    "batches",
    "batches_failed",
    "records_in",
    "records_out",
    "records_filtered",
    "records_failed",
    "duration_ms_sum",
)
TOKEN_SUM_FIELDS = (
    "requests",
    "requests_failed",
    "model_records",
    "prompt_tokens",
    "completion_tokens",
    "retry_tokens",
    "latency_ms_sum",
) + LATENCY_FIELDS
DIMENSION_FIELDS = ("project_id", "pipeline_id", "stage_template", "model_version")


class RollupRow(LatencyHistogram):
    """Abstract: a rollup bucket's key (granularity, bucket, project and the dimension columns) and its
    summed metric columns, shared by the summary rows and the slices summed from them."""

    id = models.BigAutoField(primary_key=True)
    granularity = models.CharField(_("granularity"), max_length=6, choices=Granularity.choices)
    bucket = models.DateTimeField(_("bucket start"))
    project_id = models.BigIntegerField(_("project"))
    pipeline_id = models.BigIntegerField(_("pipeline"), default=0)
    stage_template = models.CharField(_("stage template"), max_length=50, default="", blank=True)
    model_version = models.CharField(_("model version"), max_length=50, default="", blank=True)
    # 0 for pipeline traffic; a gateway key's id for calls through the gateway.
    gateway_key_id = models.BigIntegerField(_("gateway key"), default=0)
    batches = models.BigIntegerField(_("batches"), default=0)
    batches_failed = models.BigIntegerField(_("failed batches"), default=0)
    records_in = models.BigIntegerField(_("records in"), default=0)
    records_out = models.BigIntegerField(_("records out"), default=0)
    records_filtered = models.BigIntegerField(_("records filtered"), default=0)
    records_failed = models.BigIntegerField(_("records failed"), default=0)
    duration_ms_sum = models.FloatField(_("batch time sum (ms)"), default=0)
    requests = models.BigIntegerField(_("requests"), default=0)
    requests_failed = models.BigIntegerField(_("failed requests"), default=0)
    model_records = models.BigIntegerField(_("records sent to models"), default=0)
    prompt_tokens = models.BigIntegerField(_("prompt tokens"), default=0)
    completion_tokens = models.BigIntegerField(_("completion tokens"), default=0)
    retry_tokens = models.BigIntegerField(_("retry tokens"), default=0)
    latency_ms_sum = models.FloatField(_("latency sum (ms)"), default=0)
    latency_ms_max = models.FloatField(_("latency max (ms)"), default=0)
    updated_at = models.DateTimeField(_("updated at"))

    class Meta:
        abstract = True


class MetricsSummary(RollupRow):
    """A rollup bucket (minute, hour or day) per project, pipeline, stage template and model version."""

    class Meta:
        db_table = "metrics_summary"
        ordering = ["-bucket"]
        verbose_name = _("metrics rollup")
        verbose_name_plural = _("metrics rollups")
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "granularity",
                    "bucket",
                    "project_id",
                    "pipeline_id",
                    "stage_template",
                    "model_version",
                    "gateway_key_id",
                ],
                name="%(app_label)s_%(class)s_unique_bucket",
                violation_error_message=_("This rollup bucket already exists."),
            )
        ]
        # The unique index serves (granularity, bucket-range) scans; these serve a project,
        # pipeline, stage or model filter over a long window without reading every other key's buckets.
        indexes = [
            models.Index(fields=["granularity", "project_id", "bucket"], name="summary_gran_proj_bucket_idx"),
            models.Index(fields=["granularity", "pipeline_id", "bucket"], name="summary_gran_pipe_bucket_idx"),
            models.Index(fields=["granularity", "stage_template", "bucket"], name="summary_gran_stage_bucket_idx"),
            models.Index(fields=["granularity", "model_version", "bucket"], name="summary_gran_model_bucket_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.granularity} {self.bucket:%Y-%m-%d %H:%M} p{self.project_id}"


class MetricsStatusSummary(LatencyHistogram):
    """A rollup bucket of model calls per outcome status (the request-structure pie).

    It carries every token column: raw token events are scanned once into this table, and the
    summary's token columns are summed from it (one pass over a busy minute instead of two).
    """

    id = models.BigAutoField(primary_key=True)
    granularity = models.CharField(_("granularity"), max_length=6, choices=Granularity.choices)
    bucket = models.DateTimeField(_("bucket start"))
    project_id = models.BigIntegerField(_("project"))
    pipeline_id = models.BigIntegerField(_("pipeline"), default=0)
    stage_template = models.CharField(_("stage template"), max_length=50, default="", blank=True)
    model_version = models.CharField(_("model version"), max_length=50, default="", blank=True)
    gateway_key_id = models.BigIntegerField(_("gateway key"), default=0)
    status_code = models.CharField(_("status"), max_length=32)
    requests = models.BigIntegerField(_("requests"), default=0)
    records = models.BigIntegerField(_("records"), default=0)
    prompt_tokens = models.BigIntegerField(_("prompt tokens"), default=0)
    completion_tokens = models.BigIntegerField(_("completion tokens"), default=0)
    retry_tokens = models.BigIntegerField(_("retry tokens"), default=0)
    latency_ms_sum = models.FloatField(_("latency sum (ms)"), default=0)
    latency_ms_max = models.FloatField(_("latency max (ms)"), default=0)
    updated_at = models.DateTimeField(_("updated at"))

    class Meta:
        db_table = "metrics_status_summary"
        ordering = ["-bucket"]
        verbose_name = _("request status rollup")
        verbose_name_plural = _("request status rollups")
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "granularity",
                    "bucket",
                    "project_id",
                    "pipeline_id",
                    "stage_template",
                    "model_version",
                    "gateway_key_id",
                    "status_code",
                ],
                name="%(app_label)s_%(class)s_unique_bucket",
                violation_error_message=_("This rollup bucket already exists."),
            )
        ]
        indexes = [
            models.Index(fields=["granularity", "project_id", "bucket"], name="status_gran_proj_bucket_idx"),
            models.Index(fields=["granularity", "pipeline_id", "bucket"], name="status_gran_pipe_bucket_idx"),
            models.Index(fields=["granularity", "stage_template", "bucket"], name="status_gran_stage_bucket_idx"),
            models.Index(fields=["granularity", "model_version", "bucket"], name="status_gran_model_bucket_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.granularity} {self.bucket:%Y-%m-%d %H:%M} {self.status_code}"


# Pre-aggregated slices of metrics_summary: per bucket and project, the totals and the totals per
# one dimension. name -> the dimension columns its rows keep (the others hold their neutral value:
# 0 or ''). Gateway-key rows keep the model version too (the gateway chart is per key and model).
SLICE_DIMENSIONS = {
    "total": (),
    "pipeline": ("pipeline_id",),
    "stage": ("stage_template",),
    "model": ("model_version",),
    "key": ("gateway_key_id", "model_version"),
}
SLICE_DIMENSION_COLUMNS = ("pipeline_id", "stage_template", "model_version", "gateway_key_id")


class MetricsSlice(RollupRow):
    """Sums of `MetricsSummary` rows per bucket and project: in total, or per one dimension.

    Written by the same statements' transaction as the summary rows of its buckets (rollup pass,
    rebuild, compaction, retention), so a read that filters on no more than a project and one
    dimension sums a few rows per bucket here instead of every dimension key's row there.
    """

    # "total" or the dimension its rows keep (SLICE_DIMENSIONS); the other dimension columns are neutral.
    dimension = models.CharField(_("dimension"), max_length=8)

    class Meta:
        db_table = "metrics_slice"
        ordering = ["-bucket"]
        verbose_name = _("metrics rollup slice")
        verbose_name_plural = _("metrics rollup slices")
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "granularity",
                    "dimension",
                    "bucket",
                    "project_id",
                    "pipeline_id",
                    "stage_template",
                    "model_version",
                    "gateway_key_id",
                ],
                name="%(app_label)s_%(class)s_unique_bucket",
                violation_error_message=_("This rollup bucket already exists."),
            )
        ]
        # The unique index serves every project's rows of a window; this one a project's.
        indexes = [
            models.Index(fields=["granularity", "dimension", "project_id", "bucket"], name="slice_gran_dim_proj_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.granularity} {self.bucket:%Y-%m-%d %H:%M} p{self.project_id} {self.dimension}"


class MetricsStatusSlice(LatencyHistogram):
    """Sums of `MetricsStatusSummary` rows per bucket, project and status (the unfiltered pie)."""

    id = models.BigAutoField(primary_key=True)
    granularity = models.CharField(_("granularity"), max_length=6, choices=Granularity.choices)
    bucket = models.DateTimeField(_("bucket start"))
    project_id = models.BigIntegerField(_("project"))
    status_code = models.CharField(_("status"), max_length=32)
    requests = models.BigIntegerField(_("requests"), default=0)
    records = models.BigIntegerField(_("records"), default=0)
    prompt_tokens = models.BigIntegerField(_("prompt tokens"), default=0)
    completion_tokens = models.BigIntegerField(_("completion tokens"), default=0)
    retry_tokens = models.BigIntegerField(_("retry tokens"), default=0)
    latency_ms_sum = models.FloatField(_("latency sum (ms)"), default=0)
    latency_ms_max = models.FloatField(_("latency max (ms)"), default=0)
    updated_at = models.DateTimeField(_("updated at"))

    class Meta:
        db_table = "metrics_status_slice"
        ordering = ["-bucket"]
        verbose_name = _("request status rollup slice")
        verbose_name_plural = _("request status rollup slices")
        constraints = [
            models.UniqueConstraint(
                fields=["granularity", "bucket", "project_id", "status_code"],
                name="%(app_label)s_%(class)s_unique_bucket",
                violation_error_message=_("This rollup bucket already exists."),
            )
        ]
        indexes = [
            models.Index(fields=["granularity", "project_id", "bucket"], name="status_slice_gran_proj_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.granularity} {self.bucket:%Y-%m-%d %H:%M} p{self.project_id} {self.status_code}"


class RollupWatermark(models.Model):
    """How far raw events have been rolled up, per granularity, and the last raw ids seen."""

    granularity = models.CharField(_("granularity"), max_length=6, choices=Granularity.choices, unique=True)
    rolled_until = models.DateTimeField(_("rolled up until"))
    # Raw ids already rolled up: a later pass re-rolls the buckets of any newer id with an
    # old timestamp (a very late event) besides the trailing window.
    last_batch_event_id = models.BigIntegerField(default=0)
    last_token_usage_id = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = _("rollup watermark")
        verbose_name_plural = _("rollup watermarks")

    def __str__(self) -> str:
        return f"{self.granularity} @ {self.rolled_until}"


class RollupRebuild(models.Model):
    """A rollup rebuild of [start, end): how far it got, so a killed rebuild resumes there."""

    start = models.DateTimeField(_("start"))
    end = models.DateTimeField(_("end"))
    # The rebuild's reference time: horizons (which days keep minutes and hours) are taken from it,
    # so a resumed rebuild treats its remaining days as the first attempt did.
    now = models.DateTimeField(_("reference time"))
    done_through = models.DateTimeField(_("done through"), null=True, blank=True)
    rows = models.BigIntegerField(_("rows written"), default=0)
    started_at = models.DateTimeField(_("started at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)

    class Meta:
        verbose_name = _("rollup rebuild")
        verbose_name_plural = _("rollup rebuilds")

    def __str__(self) -> str:
        return f"{self.start:%Y-%m-%d} → {self.end:%Y-%m-%d}"

    def mark_done(self, done_through, rows: int) -> None:
        """Record that every day before `done_through` is rolled up."""
        self.done_through, self.rows = done_through, rows
        self.save(update_fields=["done_through", "rows", "updated_at"])
