"""Metrics writes: raw events from workers, rollups into buckets, rebuild and retention.

Rollups run in the database: each step is one `INSERT ... SELECT ... GROUP BY ... ON CONFLICT DO
UPDATE` (PostgreSQL and SQLite both speak it), whose SELECT is a Django queryset compiled for
the backend. Re-running a window writes the same rows (idempotent); the minute buckets of the
trailing window are recomputed on every pass, so late events land without a rebuild.
Hour buckets are recomputed from minute buckets and day buckets from hour buckets, so a pass
touches a handful of rows per dimension key whatever the raw volume.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import (
    BigIntegerField,
    Count,
    DateTimeField,
    ExpressionWrapper,
    F,
    FloatField,
    Func,
    Max,
    Min,
    Q,
    Sum,
    Value,
)
from django.db.models.functions import Cast, Coalesce, TruncDay, TruncHour, TruncMinute, TruncMonth, TruncWeek
from django.utils import timezone

from .choices import Granularity
from .models import (
    BATCH_SUM_FIELDS,
    LATENCY_BOUNDS_MS,
    LATENCY_FIELDS,
    SLICE_DIMENSION_COLUMNS,
    SLICE_DIMENSIONS,
    TOKEN_SUM_FIELDS,
    BatchEvent,
    MetricsSlice,
    MetricsStatusSlice,
    MetricsStatusSummary,
    MetricsSummary,
    RollupRebuild,
    RollupWatermark,
    TokenUsage,
)

logger = logging.getLogger(__name__)

__all__ = [
    "batch_event_record",
    "batch_events_record",
    "token_usage_record",
    "token_usage_record_many",
    "metrics_rollup",
    "metrics_rollup_rebuild",
    "metrics_prune",
    "latency_histogram",
]

OK_STATUS = "OK"
STEP = {
    Granularity.MINUTE: timedelta(minutes=1),
    Granularity.HOUR: timedelta(hours=1),
    Granularity.DAY: timedelta(days=1),
    Granularity.WEEK: timedelta(weeks=1),
}
_TRUNC = {
    Granularity.MINUTE: TruncMinute,
    Granularity.HOUR: TruncHour,
    Granularity.DAY: TruncDay,
    Granularity.WEEK: TruncWeek,
    Granularity.MONTH: TruncMonth,
}
COARSE_GRANULARITIES = (Granularity.WEEK, Granularity.MONTH)


# ---- Settings ------------------------------------------------------------------------------
def config_value(key: str, default):
    """An operational setting from the system config (core/config.py), else the settings default."""
    try:
        from dataflare_portal.core.config import config_get

        return config_get(key)
    except (ImportError, KeyError):
        return getattr(settings, key.upper(), default)


def rollup_interval_seconds() -> float:
    """How often beat runs the rollup (the lagging flag compares the watermark with it)."""
    entry = settings.CELERY_BEAT_SCHEDULE.get("rollup-metrics", {})
    schedule = entry.get("schedule", 30.0)
    return float(getattr(schedule, "total_seconds", lambda: schedule)())


def late_window() -> timedelta:
    """How long a minute stays open to events that no new id announces.

    New ids find late events of any age; this window only covers an event whose id was taken
    before a pass read MAX(id) but committed after it. Each minute is recomputed from raw once
    more as it leaves the window (see `metrics_rollup`).
    """
    return timedelta(minutes=getattr(settings, "METRICS_LATE_MINUTES", 2))


@dataclass(frozen=True)
class Retention:
    """How long raw events and each rollup granularity are kept (system settings), read at once."""

    raw_days: int
    minute_days: int
    hour_days: int

    def minute_horizon(self, now: datetime) -> datetime:
        """Before this, minute rollups and raw events may be pruned: hours there come from raw only."""
        return bucket_floor(now - timedelta(days=min(self.raw_days, self.minute_days)), Granularity.DAY)

    def hour_horizon(self, now: datetime) -> datetime:
        """Before this, hour rollups are compacted away (day rows hold their sums).

        Never later than the minute horizon: a late event re-rolls its day from hours, and only
        events after the minute horizon are re-rolled, so the hours of those days must still exist.
        """
        return min(bucket_floor(now - timedelta(days=self.hour_days), Granularity.DAY), self.minute_horizon(now))


_RETENTION_DEFAULTS = {"raw_retention_days": 7, "minute_rollup_retention_days": 14, "hour_rollup_retention_days": 35}


def retention() -> Retention:
    try:
        from dataflare_portal.core.config import config_get_many

        values = config_get_many(*_RETENTION_DEFAULTS)
    except (ImportError, KeyError):
        values = {key: getattr(settings, key.upper(), default) for key, default in _RETENTION_DEFAULTS.items()}
    return Retention(
        int(values["raw_retention_days"]),
        int(values["minute_rollup_retention_days"]),
        int(values["hour_rollup_retention_days"]),
    )


def raw_retention_days() -> int:
    return retention().raw_days


def minute_retention_days() -> int:
    return retention().minute_days


# ---- Raw events ----------------------------------------------------------------------------
def latency_histogram(*, samples: list[float] | None, requests: int, latency_ms_sum: float) -> dict[str, int]:
    """Histogram counters for one event: from the samples, else all requests at the mean latency."""
    counts = [0] * len(LATENCY_FIELDS)
    if samples:
        for value in samples:
            counts[bisect.bisect_left(LATENCY_BOUNDS_MS, value)] += 1
    elif requests > 0:
        counts[bisect.bisect_left(LATENCY_BOUNDS_MS, latency_ms_sum / requests)] += requests
    return dict(zip(LATENCY_FIELDS, counts, strict=True))


def model_label(model_name: str, model_version: str) -> str:
    """The dashboard's "model version" dimension: "name:version", since servers reuse "1" across models."""
    model_name, model_version = (model_name or "").strip(), (model_version or "").strip()
    if not model_name or not model_version or ":" in model_version:
        return model_version or ""
    return f"{model_name}:{model_version}"


def batch_event_record(
    *,
    ts: datetime,
    project_id: int,
    pipeline_id: int | None,
    run_id,
    stage_template: str,
    records_in: int,
    records_out: int,
    records_filtered: int,
    records_failed: int,
    duration_ms: float,
    succeeded: bool = True,
    model_version: str = "",
    model_name: str = "",
) -> None:
    """Record one finished batch attempt."""
    batch_events_record(
        [
            {
                "ts": ts,
                "project_id": project_id,
                "pipeline_id": pipeline_id,
                "run_id": run_id,
                "stage_template": stage_template,
                "records_in": records_in,
                "records_out": records_out,
                "records_filtered": records_filtered,
                "records_failed": records_failed,
                "duration_ms": duration_ms,
                "succeeded": succeeded,
                "model_version": model_version,
                "model_name": model_name,
            }
        ]
    )


def batch_events_record(events: list[dict]) -> None:
    """Record finished batch attempts in one INSERT (the engine's commit of a batch and its fused stages).

    Each dict takes the keyword arguments of batch_event_record.
    """
    rows = []
    for e in events:
        event = BatchEvent(
            ts=e["ts"],
            project_id=e["project_id"],
            pipeline_id=e.get("pipeline_id"),
            run_id=e.get("run_id"),
            stage_template=e.get("stage_template") or "",
            model_version=model_label(e.get("model_name", ""), e.get("model_version", "")),
            records_in=e["records_in"],
            records_out=e["records_out"],
            records_filtered=e["records_filtered"],
            records_failed=e["records_failed"],
            duration_ms=e["duration_ms"],
            succeeded=e.get("succeeded", True),
        )
        # Constraints are the database's (a CHECK); validating them here would cost a query per event.
        event.full_clean(validate_unique=False, validate_constraints=False)
        rows.append(event)
    if rows:
        BatchEvent.objects.bulk_create(rows)


def _token_usage_build(row: dict) -> TokenUsage:
    row = dict(row)
    samples = row.pop("latency_ms_samples", None)
    requests = int(row.get("requests", 1))
    latency_sum = float(row.get("latency_ms_sum", 0.0))
    if samples:
        latency_sum = row["latency_ms_sum"] = float(row.get("latency_ms_sum") or sum(samples))
        row["latency_ms_max"] = max(float(row.get("latency_ms_max") or 0.0), max(samples))
    row["stage_template"] = row.get("stage_template") or ""
    row["model_version"] = model_label(row.get("model_name", ""), row.get("model_version", ""))
    row["status_code"] = str(row.get("status_code") or OK_STATUS)
    event = TokenUsage(**row, **latency_histogram(samples=samples, requests=requests, latency_ms_sum=latency_sum))
    event.full_clean(validate_unique=False, validate_constraints=False)
    return event


def token_usage_record(
    *,
    ts: datetime,
    project_id: int,
    pipeline_id: int | None,
    run_id,
    stage_template: str,
    model_name: str,
    model_version: str,
    status_code: str,
    requests: int,
    records: int,
    prompt_tokens: int,
    completion_tokens: int,
    latency_ms_sum: float,
    latency_ms_max: float,
    latency_ms_samples: list[float] | None = None,
    gateway_key_id: int | None = None,
) -> None:
    """Record one group of model calls with one outcome (called by workers, the gRPC client and the gateway)."""
    token_usage_record_many(
        [
            {
                "ts": ts,
                "project_id": project_id,
                "pipeline_id": pipeline_id,
                "run_id": run_id,
                "stage_template": stage_template,
                "model_name": model_name,
                "model_version": model_version,
                "status_code": status_code,
                "requests": requests,
                "records": records,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "latency_ms_sum": latency_ms_sum,
                "latency_ms_max": latency_ms_max,
                "latency_ms_samples": latency_ms_samples,
                "gateway_key_id": gateway_key_id,
            }
        ]
    )


def token_usage_record_many(rows: list[dict]) -> None:
    """Record many token usage events in one INSERT (rows take token_usage_record's arguments)."""
    events = [_token_usage_build(row) for row in rows]
    if events:
        TokenUsage.objects.bulk_create(events, batch_size=1000)


# ---- Bucket expressions --------------------------------------------------------------------
def _bucket_offset() -> timedelta:
    """UTC offset of the portal's time zone: day buckets start at local midnight.

    A fixed offset taken now: zones with daylight saving shift day buckets by an hour for half
    the year, which is the price of truncating in SQL identically on SQLite and PostgreSQL.
    """
    offset = timezone.get_default_timezone().utcoffset(datetime.now()) or timedelta(0)
    return offset


def bucket_floor(value: datetime, granularity: str) -> datetime:
    """The start of the bucket holding `value` (aware, UTC), in Python, matching the SQL."""
    offset = _bucket_offset()
    local = value.astimezone(UTC) + offset
    if granularity == Granularity.MINUTE:
        local = local.replace(second=0, microsecond=0)
    elif granularity == Granularity.HOUR:
        local = local.replace(minute=0, second=0, microsecond=0)
    else:
        local = local.replace(hour=0, minute=0, second=0, microsecond=0)
        if granularity == Granularity.WEEK:  # ISO weeks start on Monday, as SQL's week truncation
            local -= timedelta(days=local.weekday())
        elif granularity == Granularity.MONTH:
            local = local.replace(day=1)
    return local - offset


def bucket_next(floor: datetime, granularity: str) -> datetime:
    """The start of the bucket after the one starting at `floor`."""
    if granularity != Granularity.MONTH:
        return floor + STEP[granularity]
    return bucket_floor(floor + timedelta(days=32), Granularity.MONTH)


def bucket_ceil(value: datetime, granularity: str) -> datetime:
    floor = bucket_floor(value, granularity)
    return floor if floor == value else bucket_next(floor, granularity)


# SQLite: the bucket's start as the text Django stores a datetime as ("YYYY-MM-DD HH:MM:SS"), with
# SQLite's own date functions. Django's Trunc calls a Python function per row there, which made one
# rollup pass over a minute at 5,000 events/s take seconds on the embedded default.
_SQLITE_FLOOR = {
    Granularity.MINUTE: ("%Y-%m-%d %H:%M:00",),
    Granularity.HOUR: ("%Y-%m-%d %H:00:00",),
    Granularity.DAY: ("%Y-%m-%d 00:00:00",),
    # The Monday on or before the day: back 6 days, then forward to the next Monday (ISO weeks).
    Granularity.WEEK: ("%Y-%m-%d 00:00:00", "-6 days", "weekday 1"),
    Granularity.MONTH: ("%Y-%m-01 00:00:00",),
}


class _SQLiteBucketFloor(Func):
    """The start of a timestamp column's bucket, in UTC shifted by the portal's offset (SQLite only)."""

    output_field = DateTimeField()

    def __init__(self, field_name: str, granularity: str, offset: timedelta):
        super().__init__(F(field_name))
        self.granularity, self.offset = granularity, offset

    def as_sql(self, compiler, connection, **extra):
        column, params = compiler.compile(self.source_expressions[0])
        fmt, *modifiers = _SQLITE_FLOOR[self.granularity]
        seconds = int(self.offset.total_seconds())
        if seconds:
            modifiers = [f"{seconds:+d} seconds", *modifiers]
        # To the second first: SQLite rounds fractions to milliseconds (23:59:59.9999 would floor to the next day).
        sql = f"strftime(%s, substr({column}, 1, 19){', %s' * len(modifiers)})"
        params = [fmt, *params, *modifiers]
        if seconds:
            sql = f"strftime(%s, {sql}, %s)"
            params = ["%Y-%m-%d %H:%M:%S", *params, f"{-seconds:+d} seconds"]
        return sql, params


def _bucket_expr(field_name: str, granularity: str):
    """SQL for the bucket of a timestamp column, in UTC shifted by the portal's offset."""
    offset = _bucket_offset()
    if connection.vendor == "sqlite":
        return _SQLiteBucketFloor(field_name, granularity, offset)
    trunc = _TRUNC[granularity]
    if not offset:
        return trunc(field_name, tzinfo=UTC)
    shifted = ExpressionWrapper(F(field_name) + Value(offset), output_field=DateTimeField())
    floor = ExpressionWrapper(trunc(shifted, tzinfo=UTC) - Value(offset), output_field=DateTimeField())
    # date_trunc(... AT TIME ZONE 'UTC') - interval is a timestamp without time zone; the cast makes it
    # the aware UTC instant (the connection's zone is UTC), as the un-shifted Trunc returns.
    return Cast(floor, DateTimeField())


_FLOAT_SOURCES = {"duration_ms", "duration_ms_sum", "latency_ms_sum"}


def sum_or_zero(name: str, **extra):
    """SUM of a column, 0 over no rows (typed, so float and integer columns mix cleanly)."""
    output = FloatField() if name in _FLOAT_SOURCES else BigIntegerField()
    return Coalesce(Sum(name, **extra), Value(0), output_field=output)


def _metrics(**aggregates) -> dict:
    """Aggregates named `m_<column>`: a bare column name would clash with the model's field."""
    return {f"m_{name}": expr for name, expr in aggregates.items()}


# ---- The upsert ----------------------------------------------------------------------------
_SUMMARY_METRIC_FIELDS = BATCH_SUM_FIELDS + TOKEN_SUM_FIELDS + ("latency_ms_max",)


_KEY_ALIAS = {"bucket": "m_bucket", "pipeline_id": "m_pipe", "gateway_key_id": "m_key"}
# Stand-in window bounds: a statement is compiled once with these, then run with real bounds.
_SENTINELS = (datetime(2001, 1, 1, tzinfo=UTC), datetime(2001, 1, 2, tzinfo=UTC), datetime(2001, 1, 3, tzinfo=UTC))
_statements: dict[tuple, tuple[str, list]] = {}


_STATUS_SUM_FIELDS = (
    "requests",
    "records",
    "prompt_tokens",
    "completion_tokens",
    "retry_tokens",
    "latency_ms_sum",
) + LATENCY_FIELDS
_STATUS_FIELDS = _STATUS_SUM_FIELDS + ("latency_ms_max",)


def _metric_columns(model) -> list[str]:
    if model is MetricsSummary:
        return list(_SUMMARY_METRIC_FIELDS)
    return list(_STATUS_FIELDS)


def _upsert_sql(model, *, granularity: str, source_qs, fields: tuple[str, ...], extra_keys=()) -> tuple[str, list]:
    """INSERT the grouped rows of `source_qs` into `model`'s buckets; on conflict overwrite `fields`."""
    q = connection.ops.quote_name
    keys = ("bucket", "project_id", "pipeline_id", "stage_template", "model_version", "gateway_key_id") + tuple(
        extra_keys
    )
    all_metrics = [f for f in _metric_columns(model) if f not in keys]
    sub_sql, sub_params = source_qs.query.sql_with_params()
    select = ["%s"]
    for name in keys:
        select.append(f"src.{q(_KEY_ALIAS.get(name, name))}")
    for name in all_metrics:
        select.append(f"src.{q('m_' + name)}" if name in fields else "0")
    select.append("%s")
    columns = ("granularity",) + keys + tuple(all_metrics) + ("updated_at",)
    conflict = ("granularity",) + keys
    updates = ", ".join(f"{q(f)} = excluded.{q(f)}" for f in fields + ("updated_at",))
    sql = (
        # Every identifier is a model column quoted by the backend; values go as parameters.
        f"INSERT INTO {q(model._meta.db_table)} ({', '.join(q(c) for c in columns)}) "  # noqa: S608
        f"SELECT {', '.join(select)} FROM ({sub_sql}) src WHERE true "
        f"ON CONFLICT ({', '.join(q(c) for c in conflict)}) DO UPDATE SET {updates}"
    )
    adapt = connection.ops.adapt_datetimefield_value
    return sql, [granularity, adapt(_SENTINELS[2]), *sub_params]


def _run(name: str, granularity: str, build, start: datetime, end: datetime, now: datetime) -> int:
    """Run statement `name` for [start, end); compiling a grouped queryset costs more than running it."""
    key = (name, granularity, connection.vendor, connection.alias, _bucket_offset())
    if key not in _statements:
        _statements[key] = build(granularity, *_SENTINELS[:2])
    sql, params = _statements[key]
    return _execute(sql, params, start, end, now)


def _execute(sql: str, params: list, start: datetime, end: datetime, now: datetime) -> int:
    """Run a compiled statement with the sentinel bounds swapped for [start, end) and `now`."""
    adapt = connection.ops.adapt_datetimefield_value
    swap = {repr(adapt(s)): adapt(v) for s, v in zip(_SENTINELS, (start, end, now), strict=True)}
    with connection.cursor() as cursor:
        cursor.execute(sql, [swap.get(repr(p), p) for p in params])
        return cursor.rowcount


def _raw_grouped(qs, granularity: str, keys: tuple[str, ...] = ()):
    # Batch events are pipeline traffic (key 0); token events carry the gateway key of gateway calls.
    if qs.model is TokenUsage:
        key = Coalesce("gateway_key_id", Value(0), output_field=BigIntegerField())
    else:
        key = Value(0, output_field=BigIntegerField())
    return (
        qs.order_by()
        .annotate(m_bucket=_bucket_expr("ts", granularity), m_pipe=Coalesce("pipeline_id", 0), m_key=key)
        .values("m_bucket", "project_id", "m_pipe", "stage_template", "model_version", "m_key", *keys)
    )


def _raw_batch_sql(granularity, start, end):
    qs = _raw_grouped(BatchEvent.objects.filter(ts__gte=start, ts__lt=end), granularity).annotate(
        **_metrics(
            batches=Count("id"),
            batches_failed=Count("id", filter=Q(succeeded=False)),
            records_in=sum_or_zero("records_in"),
            records_out=sum_or_zero("records_out"),
            records_filtered=sum_or_zero("records_filtered"),
            records_failed=sum_or_zero("records_failed"),
            duration_ms_sum=sum_or_zero("duration_ms"),
        )
    )
    return _upsert_sql(MetricsSummary, granularity=granularity, source_qs=qs, fields=BATCH_SUM_FIELDS)


def _status_token_sql(granularity, start, end):
    """The summary's token columns, summed over the per-status rows of the same buckets."""
    qs = (
        MetricsStatusSummary.objects.filter(granularity=granularity, bucket__gte=start, bucket__lt=end)
        .order_by()
        .annotate(m_bucket=F("bucket"), m_pipe=F("pipeline_id"), m_key=F("gateway_key_id"))
        .values("m_bucket", "project_id", "m_pipe", "stage_template", "model_version", "m_key")
        .annotate(
            **_metrics(
                requests=sum_or_zero("requests"),
                requests_failed=sum_or_zero("requests", filter=~Q(status_code=OK_STATUS)),
                model_records=sum_or_zero("records"),
                prompt_tokens=sum_or_zero("prompt_tokens"),
                completion_tokens=sum_or_zero("completion_tokens"),
                retry_tokens=sum_or_zero("retry_tokens"),
                latency_ms_sum=sum_or_zero("latency_ms_sum"),
                latency_ms_max=Coalesce(Max("latency_ms_max"), Value(0.0)),
                **{name: sum_or_zero(name) for name in LATENCY_FIELDS},
            )
        )
    )
    fields = TOKEN_SUM_FIELDS + ("latency_ms_max",)
    return _upsert_sql(MetricsSummary, granularity=granularity, source_qs=qs, fields=fields)


def _raw_status_sql(granularity, start, end):
    qs = _raw_grouped(TokenUsage.objects.filter(ts__gte=start, ts__lt=end), granularity, ("status_code",))
    qs = qs.annotate(
        **_metrics(
            **{name: sum_or_zero(name) for name in _STATUS_SUM_FIELDS},
            latency_ms_max=Coalesce(Max("latency_ms_max"), Value(0.0)),
        )
    )
    return _upsert_sql(
        MetricsStatusSummary,
        granularity=granularity,
        source_qs=qs,
        fields=_STATUS_FIELDS,
        extra_keys=("status_code",),
    )


def _roll_from_raw(granularity: str, start: datetime, end: datetime, now: datetime) -> int:
    """Buckets of `granularity` in [start, end) computed from raw events."""
    rows = _run("raw_batch", granularity, _raw_batch_sql, start, end, now)
    # Token events are read once, into the per-status buckets; the summary sums those.
    _run("raw_status", granularity, _raw_status_sql, start, end, now)
    rows += _run("status_token", granularity, _status_token_sql, start, end, now)
    _roll_slices(granularity, start, end, now)
    return rows


_SOURCE = {
    Granularity.HOUR: Granularity.MINUTE,
    Granularity.DAY: Granularity.HOUR,
    Granularity.WEEK: Granularity.DAY,
    Granularity.MONTH: Granularity.DAY,
}


def _rollup_grouped(model, granularity, start, end, keys=()):
    return (
        model.objects.filter(granularity=_SOURCE[granularity], bucket__gte=start, bucket__lt=end)
        .order_by()
        .annotate(m_bucket=_bucket_expr("bucket", granularity), m_pipe=F("pipeline_id"), m_key=F("gateway_key_id"))
        .values("m_bucket", "project_id", "m_pipe", "stage_template", "model_version", "m_key", *keys)
    )


def _rollup_summary_sql(granularity, start, end):
    qs = _rollup_grouped(MetricsSummary, granularity, start, end).annotate(
        **_metrics(
            **{name: sum_or_zero(name) for name in BATCH_SUM_FIELDS + TOKEN_SUM_FIELDS},
            latency_ms_max=Coalesce(Max("latency_ms_max"), Value(0.0)),
        )
    )
    return _upsert_sql(MetricsSummary, granularity=granularity, source_qs=qs, fields=_SUMMARY_METRIC_FIELDS)


def _rollup_status_sql(granularity, start, end):
    qs = _rollup_grouped(MetricsStatusSummary, granularity, start, end, ("status_code",)).annotate(
        **_metrics(
            **{name: sum_or_zero(name) for name in _STATUS_SUM_FIELDS},
            latency_ms_max=Coalesce(Max("latency_ms_max"), Value(0.0)),
        )
    )
    return _upsert_sql(
        MetricsStatusSummary,
        granularity=granularity,
        source_qs=qs,
        fields=_STATUS_FIELDS,
        extra_keys=("status_code",),
    )


def _roll_from_rollup(granularity: str, start: datetime, end: datetime, now: datetime) -> int:
    """Buckets of `granularity` in [start, end) summed from the next finer buckets."""
    rows = _run("rollup_summary", granularity, _rollup_summary_sql, start, end, now)
    _run("rollup_status", granularity, _rollup_status_sql, start, end, now)
    _roll_slices(granularity, start, end, now)
    return rows


# ---- Slices --------------------------------------------------------------------------------
# Neutral values of the dimension columns a slice row does not keep.
_NEUTRAL = {"pipeline_id": "0", "stage_template": "''", "model_version": "''", "gateway_key_id": "0"}


def _slice_sql(granularity, start, end):
    """Replace the slice rows of [start, end) with sums of the summary rows of the same buckets.

    PostgreSQL computes every slice in one scan (GROUPING SETS); SQLite has none, so there it is a
    UNION ALL of one GROUP BY per slice. Returns (DELETE, INSERT) statements.
    """
    q = connection.ops.quote_name
    adapt = connection.ops.adapt_datetimefield_value
    metrics = list(_SUMMARY_METRIC_FIELDS)
    aggs = [f"MAX({q(m)})" if m == "latency_ms_max" else f"SUM({q(m)})" for m in metrics]
    columns = ["granularity", "dimension", "bucket", "project_id", *SLICE_DIMENSION_COLUMNS, *metrics, "updated_at"]
    where = f"{q('granularity')} = %s AND {q('bucket')} >= %s AND {q('bucket')} < %s"
    window = [granularity, adapt(_SENTINELS[0]), adapt(_SENTINELS[1])]
    source = q(MetricsSummary._meta.db_table)
    if connection.vendor == "postgresql":
        # GROUPING(...) of the four dimension columns: a bit set (1) for each column a set leaves out.
        cases = []
        for name, kept in SLICE_DIMENSIONS.items():
            mask = sum(1 << (3 - i) for i, col in enumerate(SLICE_DIMENSION_COLUMNS) if col not in kept)
            cases.append(f"WHEN {mask} THEN '{name}'")
        grouping = f"GROUPING({', '.join(q(c) for c in SLICE_DIMENSION_COLUMNS)})"
        sets = ", ".join("(" + ", ".join(q(c) for c in kept) + ")" for kept in SLICE_DIMENSIONS.values())
        dims = [f"COALESCE({q(c)}, {_NEUTRAL[c]})" for c in SLICE_DIMENSION_COLUMNS]
        select = (
            # Identifiers are model columns quoted by the backend; values go as parameters.
            f"SELECT %s, CASE {grouping} {' '.join(cases)} END, {q('bucket')}, {q('project_id')}, "  # noqa: S608
            f"{', '.join(dims)}, {', '.join(aggs)}, %s FROM {source} WHERE {where} "
            f"GROUP BY {q('bucket')}, {q('project_id')}, GROUPING SETS ({sets})"
        )
        params = [granularity, adapt(_SENTINELS[2]), *window]
    else:
        parts, params = [], []
        for name, kept in SLICE_DIMENSIONS.items():
            dims = [q(c) if c in kept else _NEUTRAL[c] for c in SLICE_DIMENSION_COLUMNS]
            group = ", ".join(q(c) for c in ("bucket", "project_id", *kept))
            parts.append(
                f"SELECT %s, '{name}', {q('bucket')}, {q('project_id')}, {', '.join(dims)}, {', '.join(aggs)}, %s "  # noqa: S608
                f"FROM {source} WHERE {where} GROUP BY {group}"
            )
            params += [granularity, adapt(_SENTINELS[2]), *window]
        select = " UNION ALL ".join(parts)
    table = q(MetricsSlice._meta.db_table)
    insert = f"INSERT INTO {table} ({', '.join(q(c) for c in columns)}) {select}"
    delete = f"DELETE FROM {table} WHERE {where}"  # noqa: S608
    return (delete, window), (insert, params)


def _status_slice_sql(granularity, start, end):
    """Replace the status slice rows of [start, end) with sums of the status rows of the same buckets."""
    q = connection.ops.quote_name
    adapt = connection.ops.adapt_datetimefield_value
    metrics = list(_STATUS_FIELDS)
    aggs = [f"MAX({q(m)})" if m == "latency_ms_max" else f"SUM({q(m)})" for m in metrics]
    keys = ["bucket", "project_id", "status_code"]
    columns = ["granularity", *keys, *metrics, "updated_at"]
    where = f"{q('granularity')} = %s AND {q('bucket')} >= %s AND {q('bucket')} < %s"
    window = [granularity, adapt(_SENTINELS[0]), adapt(_SENTINELS[1])]
    table = q(MetricsStatusSlice._meta.db_table)
    insert = (
        f"INSERT INTO {table} ({', '.join(q(c) for c in columns)}) "  # noqa: S608
        f"SELECT %s, {', '.join(q(k) for k in keys)}, {', '.join(aggs)}, %s "
        f"FROM {q(MetricsStatusSummary._meta.db_table)} WHERE {where} GROUP BY {', '.join(q(k) for k in keys)}"
    )
    delete = f"DELETE FROM {table} WHERE {where}"  # noqa: S608
    return (delete, window), (insert, [granularity, adapt(_SENTINELS[2]), *window])


def _roll_slices(granularity: str, start: datetime, end: datetime, now: datetime) -> None:
    """Recompute the slices of the `granularity` buckets in [start, end) from the summary rows just
    written there, in the caller's transaction: they can never disagree with what they sum."""
    for name, build in (("slice", _slice_sql), ("status_slice", _status_slice_sql)):
        key = (name, granularity, connection.vendor, connection.alias, _bucket_offset())
        if key not in _statements:
            _statements[key] = build(granularity, *_SENTINELS[:2])
        for sql, params in _statements[key]:
            _execute(sql, params, start, end, now)


def _roll_coarse(start: datetime, end: datetime, *, now: datetime) -> int:
    """Recompute the week and month buckets touching [start, end) from day rows."""
    rows = 0
    for gran in COARSE_GRANULARITIES:
        rows += _roll_from_rollup(gran, bucket_floor(start, gran), bucket_ceil(end, gran), now)
    return rows


def _roll_range(start: datetime, end: datetime, *, now: datetime, minutes: bool, coarse: bool = True) -> int:
    """Recompute every bucket touching [start, end): minutes (optional), hours, days, then weeks
    and months (unless `coarse` is false: a rebuild rolls those once at its end)."""
    rows = 0
    if minutes:
        m_start, m_end = bucket_floor(start, Granularity.MINUTE), bucket_ceil(end, Granularity.MINUTE)
        rows += _roll_from_raw(Granularity.MINUTE, m_start, m_end, now)
        h_start, h_end = bucket_floor(start, Granularity.HOUR), bucket_ceil(end, Granularity.HOUR)
        rows += _roll_from_rollup(Granularity.HOUR, h_start, h_end, now)
    else:
        h_start, h_end = bucket_floor(start, Granularity.HOUR), bucket_ceil(end, Granularity.HOUR)
        rows += _roll_from_raw(Granularity.HOUR, h_start, h_end, now)
    d_start, d_end = bucket_floor(start, Granularity.DAY), bucket_ceil(end, Granularity.DAY)
    rows += _roll_from_rollup(Granularity.DAY, d_start, d_end, now)
    if coarse:
        rows += _roll_coarse(d_start, d_end, now=now)
    return rows


def _roll_up(ranges: list[tuple[datetime, datetime]], *, now: datetime) -> int:
    """Recompute the minutes of `ranges` from raw events, then every hour, day, week and month touching
    them from the next finer rows — each bucket once, however many of the ranges touch it."""

    def cover(spans, gran):
        return _coalesce_ranges([(bucket_floor(a, gran), bucket_ceil(b, gran)) for a, b in spans])

    minutes = cover([(a, b) for a, b in ranges if a < b], Granularity.MINUTE)
    hours = cover(minutes, Granularity.HOUR)
    days = cover(hours, Granularity.DAY)
    rows = sum(_roll_from_raw(Granularity.MINUTE, a, b, now) for a, b in minutes)
    # Weeks and months are summed from days, as days from hours and hours from minutes.
    for gran, spans in (
        (Granularity.HOUR, hours),
        (Granularity.DAY, days),
        *((g, cover(days, g)) for g in COARSE_GRANULARITIES),
    ):
        rows += sum(_roll_from_rollup(gran, a, b, now) for a, b in spans)
    return rows


def _roll_day(day: datetime, *, now: datetime) -> int:
    """Recompute one day's buckets from raw, at the granularities its age still keeps.

    Days past the hour horizon get their day rows straight from raw (their hours would be
    compacted away at once); days past the minute horizon get hours from raw, then the day.
    """
    day_end = day + STEP[Granularity.DAY]
    kept = retention()
    if day_end <= kept.hour_horizon(now):
        return _roll_from_raw(Granularity.DAY, day, day_end, now)
    return _roll_range(day, day_end, now=now, minutes=day_end > kept.minute_horizon(now), coarse=False)


# ---- The periodic pass ---------------------------------------------------------------------
@dataclass
class RollupResult:
    """What one rollup pass did."""

    start: datetime | None
    end: datetime
    rows: int = 0
    late_minutes: list[datetime] = field(default_factory=list)


def _watermarks_locked(now: datetime) -> dict[str, RollupWatermark]:
    """The watermark rows, locked for this transaction (a second pass waits, then finds no work)."""
    marks = {}
    for gran in Granularity.values:
        RollupWatermark.objects.get_or_create(
            granularity=gran, defaults={"rolled_until": datetime.min.replace(tzinfo=UTC)}
        )
    for mark in RollupWatermark.objects.select_for_update().order_by("granularity"):
        marks[mark.granularity] = mark
    return marks


def _tune_session() -> None:
    """Have the rollup's GROUP BY hash in RAM; SET LOCAL ends with the transaction.

    PostgreSQL's 4 MB default spills a minute of 300k events to disk sorts. And with fresh statistics
    the planner takes a minute's events for nearly as many groups as rows (it multiplies the key columns'
    distinct counts), so it sorts them and groups in order: comparing the text keys under the database's
    collation made that 2.4x slower than hashing (1.10 s vs 0.45 s for 300k events). Grouping needs no
    order, so sorting is off for the pass; the hash aggregate spills to disk if it ever outgrows memory.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL work_mem = '64MB'; SET LOCAL enable_sort = off")


def _minute_horizon(now: datetime) -> datetime:
    return retention().minute_horizon(now)


def hour_horizon(now: datetime) -> datetime:
    return retention().hour_horizon(now)


def _coalesce_ranges(ranges: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    merged: list[tuple[datetime, datetime]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _backfill_coarse(now: datetime) -> int:
    """Week and month rows for day rows that predate them (a portal upgraded with history)."""
    days = MetricsSummary.objects.filter(granularity=Granularity.DAY)
    if MetricsSummary.objects.filter(granularity=Granularity.MONTH).exists() or not days.exists():
        return 0
    first = days.aggregate(m=Min("bucket"))["m"]
    return _roll_coarse(first, now, now=now)


def _backfill_slices(now: datetime) -> None:
    """Slices of the summary rows that predate them (a portal upgraded with history), once."""
    if MetricsSlice.objects.exists():
        return
    spans = MetricsSummary.objects.order_by().values("granularity").annotate(first=Min("bucket"), last=Max("bucket"))
    for span in spans:
        _roll_slices(span["granularity"], span["first"], span["last"] + timedelta(seconds=1), now)


def metrics_rollup(*, now: datetime | None = None) -> RollupResult:
    """Roll raw events up to `now`: the trailing window, plus the buckets of any very late event."""
    now = now or timezone.now()
    marks = RollupWatermark.objects.filter(granularity=Granularity.MINUTE)
    first = marks.values_list("rolled_until", flat=True).first()
    if first is None or first.year == 1:
        # First pass: history older than the minute horizon (e.g. seeded or migrated events)
        # gets hour and day buckets from raw, a day per transaction; the pass does the rest.
        metrics_rollup_rebuild(start=datetime.min.replace(tzinfo=UTC), end=_minute_horizon(now), now=now)
    with transaction.atomic():
        marks = _watermarks_locked(now)
        _tune_session()
        mark = marks[Granularity.MINUTE]
        max_batch = BatchEvent.objects.aggregate(m=Max("id"))["m"] or 0
        max_token = TokenUsage.objects.aggregate(m=Max("id"))["m"] or 0
        if mark.rolled_until.year == 1:
            first = [
                v
                for v in (
                    BatchEvent.objects.filter(id__lte=max_batch).aggregate(m=Min("ts"))["m"],
                    TokenUsage.objects.filter(id__lte=max_token).aggregate(m=Min("ts"))["m"],
                )
                if v
            ]
            start = max(min(first), _minute_horizon(now)) if first else now
            since = start
        else:
            since = min(mark.rolled_until, now)
            start = since - late_window()
        start, since = bucket_floor(start, Granularity.MINUTE), bucket_floor(since, Granularity.MINUTE)
        # What arrived since the last pass is in [since, now) or announced by a new id (below). The minutes
        # before `since` change only by an event whose id a pass read past before it committed: each is
        # recomputed once more when it leaves the late window ([start, now - late window)), which is the
        # last pass that would have recomputed it had every pass recomputed the whole window, so every
        # minute ends the same; the passes in between skip it (2.5 min of events a pass, not 0.5 + 1).
        settle_end = max(start, bucket_floor(now - late_window(), Granularity.MINUTE))
        ranges = [(start, settle_end), (since, now)]
        # Events that arrived since the last pass with a timestamp before `since`.
        late: set[datetime] = set()
        horizon = _minute_horizon(now)
        for model, last, top in (
            (BatchEvent, mark.last_batch_event_id, max_batch),
            (TokenUsage, mark.last_token_usage_id, max_token),
        ):
            if top > last:
                minutes = (
                    model.objects.filter(id__gt=last, id__lte=top, ts__lt=since, ts__gte=horizon)
                    .order_by()
                    .annotate(minute=_bucket_expr("ts", Granularity.MINUTE))
                    .values_list("minute", flat=True)
                    .distinct()
                )
                late.update(minutes[:5000])
        ranges += [(m, m + STEP[Granularity.MINUTE]) for m in late]
        rows = _backfill_coarse(now)
        _backfill_slices(now)
        rows += _roll_up(ranges, now=now)
        for gran_mark in marks.values():
            gran_mark.rolled_until = now
            gran_mark.last_batch_event_id = max(gran_mark.last_batch_event_id, max_batch)
            gran_mark.last_token_usage_id = max(gran_mark.last_token_usage_id, max_token)
            gran_mark.save(update_fields=["rolled_until", "last_batch_event_id", "last_token_usage_id", "updated_at"])
    if late:
        logger.info("metrics rollup re-rolled %d minute buckets for late events", len(late))
    return RollupResult(start=start, end=now, rows=rows, late_minutes=sorted(late))


def metrics_rollup_rebuild(
    *, start: datetime, end: datetime, now: datetime | None = None, progress=None, jobs: int = 1
) -> int:
    """Recompute every bucket in [start, end) from raw events, one day per transaction.

    Days past the hour horizon get day buckets straight from raw, days past the minute horizon
    hours and days (see `_roll_day`). Ranges whose raw events were pruned keep their rollups.
    Progress is saved in a `RollupRebuild` row after every day: a rebuild of the same range that
    was killed resumes where it stopped (with its original `now`), redoing at most `jobs` days.
    On PostgreSQL `jobs` > 1 rolls up that many days at once, each on its own connection.
    """
    if end <= start:
        raise ValueError("end must be after start")
    first = [
        v for v in (BatchEvent.objects.aggregate(m=Min("ts"))["m"], TokenUsage.objects.aggregate(m=Min("ts"))["m"]) if v
    ]
    if not first:
        return 0
    rebuild = RollupRebuild.objects.filter(start=start, end=end, finished_at__isnull=True).order_by("-id").first()
    if rebuild is None:
        rebuild = RollupRebuild.objects.create(start=start, end=end, now=now or timezone.now())
        rebuild.done_through = bucket_floor(max(start, bucket_floor(min(first), Granularity.DAY)), Granularity.DAY)
        rebuild.save(update_fields=["done_through"])
    elif now is not None and now != rebuild.now:
        rebuild.now = now
        rebuild.save(update_fields=["now"])
    now = rebuild.now
    first_day = bucket_floor(max(start, bucket_floor(min(first), Granularity.DAY)), Granularity.DAY)
    covers_all = start <= min(first) and end >= now
    max_batch = BatchEvent.objects.aggregate(m=Max("id"))["m"] or 0
    max_token = TokenUsage.objects.aggregate(m=Max("id"))["m"] or 0
    days = []
    day = rebuild.done_through
    while day < end:
        days.append(day)
        day += STEP[Granularity.DAY]
    _watermarks_ensure()
    # Threads need their own connections, which cannot see an open transaction (or SQLite's lock).
    if connection.vendor != "postgresql" or jobs <= 1 or connection.in_atomic_block:
        rows = 0
        for day in days:
            rows += _rebuild_day(day, now=now)
            rebuild.mark_done(day + STEP[Granularity.DAY], rows)
            if progress:
                progress(day, rows)
    else:
        rows = _rebuild_parallel(rebuild, days, now=now, jobs=jobs, progress=progress)
    with transaction.atomic():
        marks = _watermarks_locked(now)
        _tune_session()
        # Weeks and months of the whole range (a resumed rebuild's first days were done before).
        rows += _roll_coarse(first_day, end, now=now)
        # Saving moves the watermark's version: cached dashboard answers are recomputed.
        marks[Granularity.MINUTE].save(update_fields=["updated_at"])
        if covers_all:
            # Everything up to `now` is rolled up: the next pass starts here instead of redoing it.
            for mark in marks.values():
                if mark.rolled_until < now:
                    mark.rolled_until = now
                    mark.last_batch_event_id = max(mark.last_batch_event_id, max_batch)
                    mark.last_token_usage_id = max(mark.last_token_usage_id, max_token)
                    mark.save()
    rebuild.finished_at = timezone.now()
    rebuild.save(update_fields=["finished_at"])
    return rows


def _watermarks_ensure() -> None:
    for gran in Granularity.values:
        RollupWatermark.objects.get_or_create(
            granularity=gran, defaults={"rolled_until": datetime.min.replace(tzinfo=UTC)}
        )


def _rebuild_day(day: datetime, *, now: datetime) -> int:
    """One day of a rebuild in its own transaction, sharing the watermark lock with other rebuild
    days (a periodic pass, which locks it exclusively, waits for them and they for it)."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            table = connection.ops.quote_name(RollupWatermark._meta.db_table)
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT 1 FROM {table} FOR SHARE")  # noqa: S608
        else:
            _watermarks_locked(now)
        _tune_session()
        return _roll_day(day, now=now)


def _rebuild_parallel(rebuild, days: list[datetime], *, now: datetime, jobs: int, progress) -> int:
    """Roll up `days` on `jobs` threads (PostgreSQL does the work; each thread has its own connection)."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from django.db import connections

    def work(day):
        try:
            return day, _rebuild_day(day, now=now)
        finally:
            connections.close_all()  # this thread's connections only (they are thread-local)

    rows = 0
    done: set[datetime] = set()
    cursor_day = days[0] if days else None
    step = STEP[Granularity.DAY]
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="rollup-rebuild") as pool:
        for future in as_completed([pool.submit(work, day) for day in days]):
            day, written = future.result()
            rows += written
            done.add(day)
            # Save the contiguous prefix that is done: a resumed rebuild redoes at most `jobs` days.
            while cursor_day in done:
                cursor_day += step
            rebuild.mark_done(cursor_day, rows)
            if progress:
                progress(day, rows)
    return rows


# ---- Retention -----------------------------------------------------------------------------
@dataclass
class PruneResult:
    """What one prune pass deleted."""

    batch_events: int = 0
    token_usage: int = 0
    minute_rollups: int = 0
    hour_rollups: int = 0


def _delete_chunked(qs, chunk: int = 20000) -> int:
    deleted = 0
    while True:
        ids = list(qs.order_by().values_list("id", flat=True)[:chunk])
        if not ids:
            return deleted
        deleted += qs.filter(id__in=ids).delete()[0]


# Summary rows (at least) deleted per transaction by retention and compaction.
PRUNE_CHUNK = 20000


def _delete_rollups(granularity: str, cutoff: datetime) -> int:
    """Delete the `granularity` rollup rows before `cutoff`, oldest buckets first, a few buckets per
    transaction: each removes summary, status and slice rows of the same buckets together, so the
    slices never hold a bucket the summary lost. Returns the summary and status rows deleted."""
    deleted, chunk = 0, PRUNE_CHUNK
    summary = MetricsSummary.objects.filter(granularity=granularity, bucket__lt=cutoff)
    while True:
        with transaction.atomic():
            # The bucket of the chunk-th oldest row: this step deletes every row up to its bucket.
            bound = next(iter(summary.order_by("bucket").values_list("bucket", flat=True)[chunk : chunk + 1]), None)
            upto = {"bucket__lte": bound} if bound is not None else {}
            for model in (MetricsSummary, MetricsStatusSummary, MetricsSlice, MetricsStatusSlice):
                # The granularity filter confines the delete to one partition on PostgreSQL.
                count = model.objects.filter(granularity=granularity, bucket__lt=cutoff, **upto).delete()[0]
                if model in (MetricsSummary, MetricsStatusSummary):
                    deleted += count
        if bound is None:
            return deleted


def metrics_prune(*, now: datetime | None = None) -> PruneResult:
    """Delete raw events past retention that are rolled up, minute rollups past theirs, and compact old hours."""
    now = now or timezone.now()
    result = PruneResult()
    mark = RollupWatermark.objects.filter(granularity=Granularity.MINUTE).first()
    if mark is None or mark.rolled_until.year == 1:
        return result  # nothing rolled up yet: keep every raw event
    # Only events before the trailing window are final in the rollups.
    kept = retention()
    raw_cutoff = min(now - timedelta(days=kept.raw_days), mark.rolled_until - late_window())
    result.batch_events = _delete_chunked(
        BatchEvent.objects.filter(ts__lt=raw_cutoff, id__lte=mark.last_batch_event_id)
    )
    result.token_usage = _delete_chunked(TokenUsage.objects.filter(ts__lt=raw_cutoff, id__lte=mark.last_token_usage_id))
    minute_cutoff = min(
        bucket_floor(now - timedelta(days=kept.minute_days), Granularity.DAY),
        bucket_floor(mark.rolled_until, Granularity.DAY),
    )
    # Hours of days past the hour horizon are compacted: their day rows already hold the sums.
    hour_cutoff = min(kept.hour_horizon(now), bucket_floor(mark.rolled_until, Granularity.DAY))
    result.minute_rollups = _delete_rollups(Granularity.MINUTE, minute_cutoff)
    result.hour_rollups = _delete_rollups(Granularity.HOUR, hour_cutoff)
    return result


# ---- Exports -------------------------------------------------------------------------------
def csv_export_audit(*, actor, dataset: str, filters: dict, rows: int) -> None:
    """Audit a CSV download of a metrics dataset (who, which dataset, which filters, how many rows).

    The PRD audits exports; a CSV of usage and failures leaves the portal like a template export does.
    """
    from django.utils.translation import gettext

    from dataflare_portal.core.db import atomic_unflushed
    from dataflare_portal.core.models import AuditAction
    from dataflare_portal.core.services import audit_record

    # The download waits for this commit; it records a read, so it does not also wait for the WAL flush unless
    # EXPORT_AUDIT_SYNCHRONOUS_COMMIT says so (the fsync was most of what a cached export cost beyond the JSON
    # answer under load; see atomic_unflushed for what it is and is not durable against).
    with atomic_unflushed(not settings.EXPORT_AUDIT_SYNCHRONOUS_COMMIT):
        audit_record(
            actor=actor,
            action=AuditAction.EXPORT,
            object_type="metrics.csv",
            object_id=dataset,
            object_repr=f"{dataset}.csv",
            after={"dataset": dataset, "filters": filters, "rows": rows},
            message=gettext("Downloaded %(dataset)s.csv (%(rows)d rows).") % {"dataset": dataset, "rows": rows},
        )
