"""Reads behind rule evaluation, the banner, the inbox and the overview panel.

Metric reads go to the rollups (metrics_summary) only, bounded by a window, through the few
functions at the top; they are the one place to switch to metrics.selectors when its API settles.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import Count, F, Max, OuterRef, Q, Subquery, Sum
from django.db.models.functions import Coalesce, Greatest

from metrics.choices import Granularity
from metrics.models import LATENCY_FIELDS, BatchEvent, MetricsSummary, RollupWatermark, TokenUsage
from metrics.selectors import percentile_from_histogram
from metrics.services import bucket_floor
from tasks.choices import RunStatus
from tasks.models import Batch, StageRun, TaskRun

from .choices import AlertStatus, Severity

SUM_FIELDS = (
    "batches",
    "batches_failed",
    "records_in",
    "records_out",
    "records_failed",
    "requests",
    "requests_failed",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms_sum",
)
# Rule group_by value -> rollup column.
GROUP_COLUMNS = {
    "project": "project_id",
    "pipeline": "pipeline_id",
    "stage_template": "stage_template",
    "model_version": "model_version",
}


@dataclass(frozen=True)
class Scope:
    """The slice of the metrics a rule looks at (empty values mean "all")."""

    project_id: int | None = None
    pipeline_id: int | None = None
    stage_template: str = ""
    model_version: str = ""

    @classmethod
    def of_rule(cls, rule) -> Scope:
        return cls(rule.project_id, rule.pipeline_id, rule.stage_template, rule.model_version)

    def summary_filter(self) -> Q:
        q = Q()
        if self.project_id:
            q &= Q(project_id=self.project_id)
        if self.pipeline_id:
            q &= Q(pipeline_id=self.pipeline_id)
        if self.stage_template:
            q &= Q(stage_template=self.stage_template)
        if self.model_version:
            q &= Q(model_version=self.model_version)
        return q


# ---- Rollups ---------------------------------------------------------------------------------
def granularity_for(window: dt.timedelta) -> str:
    """Minute buckets for short windows, hours up to a week, days beyond (bounded row counts)."""
    if window <= dt.timedelta(hours=6):
        return Granularity.MINUTE
    if window <= dt.timedelta(days=7):
        return Granularity.HOUR
    return Granularity.DAY


def align(ts: dt.datetime, granularity: str) -> dt.datetime:
    """The start of the bucket holding ts (the rollup's own bucketing, time zone included)."""
    return bucket_floor(ts, granularity)


def rollup_watermark(granularity: str = Granularity.MINUTE) -> dt.datetime | None:
    """How far raw events have been rolled up at this granularity (None before the first rollup)."""
    mark = RollupWatermark.objects.filter(granularity=granularity).values_list("rolled_until", flat=True).first()
    # The rollup seeds its watermark at year 1 before the first pass.
    return None if mark is None or mark.year == 1 else mark


def oldest_unrolled_event() -> dt.datetime | None:
    """The time of the first raw event the rollup has not taken yet (by id, so late events count too)."""
    mark = RollupWatermark.objects.filter(granularity=Granularity.MINUTE).first()
    found = []
    for model, last in (
        (BatchEvent, mark.last_batch_event_id if mark else 0),
        (TokenUsage, mark.last_token_usage_id if mark else 0),
    ):
        # The primary key index makes this one short read, however long the backlog is.
        ts = model.objects.filter(id__gt=last).order_by("id").values_list("ts", flat=True).first()
        if ts is not None:
            found.append(ts)
    return min(found) if found else None


def summary_totals(
    *, since: dt.datetime, until: dt.datetime, scope: Scope, group_by: str = "", fields=SUM_FIELDS, histogram=False
) -> list[dict]:
    """Sums of rollup columns over [since, until) for a scope, one row per group (one row when ungrouped)."""
    granularity = granularity_for(until - since)
    qs = MetricsSummary.objects.filter(
        scope.summary_filter(),
        granularity=granularity,
        bucket__gte=align(since, granularity),
        bucket__lt=until,
    )
    sums = {name: Coalesce(Sum(name), 0, output_field=MetricsSummary._meta.get_field(name)) for name in fields}
    if histogram:
        sums.update({name: Coalesce(Sum(name), 0) for name in LATENCY_FIELDS})
        sums["latency_ms_max"] = Max("latency_ms_max")
    column = GROUP_COLUMNS.get(group_by)
    if column:
        return [dict(row, group=row[column]) for row in qs.values(column).annotate(**sums).order_by(column)]
    row = qs.aggregate(**sums)
    return [dict(row, group=None)]


def histogram_percentile(row: dict, quantile: float = 0.95) -> float | None:
    """The latency at a quantile from summed histogram counters (interpolated in its bucket), or None."""
    counts = [int(row.get(name) or 0) for name in LATENCY_FIELDS]
    return percentile_from_histogram(counts, quantile, row.get("latency_ms_max") or None)


def last_activity(*, scope: Scope, now: dt.datetime, group_by: str = "", lookback: dt.timedelta) -> list[dict]:
    """The newest minute bucket with any activity per group within the lookback."""
    qs = MetricsSummary.objects.filter(
        scope.summary_filter(), granularity=Granularity.MINUTE, bucket__gte=now - lookback, bucket__lte=now
    ).filter(Q(batches__gt=0) | Q(requests__gt=0))
    column = GROUP_COLUMNS.get(group_by)
    if column:
        return [
            {"group": row[column], "last": row["last"]}
            for row in qs.values(column).annotate(last=Max("bucket")).order_by(column)
        ]
    return [{"group": None, "last": qs.aggregate(last=Max("bucket"))["last"]}]


# ---- Runs ------------------------------------------------------------------------------------
def _run_filter(scope: Scope) -> Q:
    q = Q()
    if scope.project_id:
        q &= Q(project_id=scope.project_id)
    if scope.pipeline_id:
        q &= Q(pipeline_id=scope.pipeline_id)
    return q


def failed_runs(*, scope: Scope, since: dt.datetime, limit: int = 200):
    """Runs that ended failed or crashed (after their final retry) since a time, newest first."""
    return (
        TaskRun.objects.filter(_run_filter(scope), status__in=(RunStatus.FAILED, RunStatus.CRASHED))
        .filter(Q(finished_at__gte=since) | Q(finished_at__isnull=True, updated_at__gte=since))
        .select_related("task", "pipeline", "project")
        .order_by("-updated_at")[:limit]
    )


def active_runs_with_progress(*, scope: Scope, limit: int = 500):
    """Active runs annotated with `progress_at`: the newest change of the run, its stage runs or batches."""
    last_stage = StageRun.objects.filter(run=OuterRef("pk")).order_by("-updated_at").values("updated_at")[:1]
    last_batch = (
        Batch.objects.filter(stage_run__run=OuterRef("pk"), finished_at__isnull=False)
        .order_by("-finished_at")
        .values("finished_at")[:1]
    )
    return (
        TaskRun.objects.filter(_run_filter(scope), status__in=RunStatus.active())
        .annotate(
            last_stage=Subquery(last_stage),
            last_batch=Subquery(last_batch),
        )
        .annotate(
            progress_at=Greatest(
                F("updated_at"), Coalesce("last_stage", "updated_at"), Coalesce("last_batch", "updated_at")
            )
        )
        .select_related("task", "pipeline", "project")
        .order_by("progress_at")[:limit]
    )


# ---- Alerts ----------------------------------------------------------------------------------
def open_alert_counts() -> dict[str, int]:
    """Open alerts per severity, plus how many of them nobody acknowledged yet."""
    from .models import Alert

    rows = (
        Alert.objects.filter(status__in=AlertStatus.open())
        .values("severity", "status")
        .annotate(n=Count("id"))
        .order_by()
    )
    counts = {Severity.CRITICAL: 0, Severity.WARNING: 0, "unacknowledged": 0}
    for row in rows:
        counts[row["severity"]] = counts.get(row["severity"], 0) + row["n"]
        if row["status"] == AlertStatus.FIRING:
            counts["unacknowledged"] += row["n"]
    return counts


def banner_alerts(*, limit: int = 5):
    """Firing critical alerts (newest first, bounded) and the number of firing warnings: the banner's query."""
    from .models import Alert

    critical = list(
        Alert.objects.filter(status=AlertStatus.FIRING, severity=Severity.CRITICAL)
        .order_by("-fired_at")
        .values("id", "title", "title_code", "title_params", "fired_at")[: limit + 1]
    )
    warnings = Alert.objects.filter(status=AlertStatus.FIRING, severity=Severity.WARNING).count()
    return critical, warnings
