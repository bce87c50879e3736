"""Metric reads for the dashboard, the API, the overview and alerts.

Every read is bounded by its query's window and served from the rollup tables (never the raw
events), at the granularity the query picked, in one or two SQL statements.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from django.core.cache import cache
from django.db.models import Case, IntegerField, Max, Min, Q, Sum, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .choices import Granularity
from .filtersets import MetricsQuery
from .models import (
    BATCH_SUM_FIELDS,
    LATENCY_BOUNDS_MS,
    LATENCY_FIELDS,
    TOKEN_SUM_FIELDS,
    MetricsSlice,
    MetricsStatusSlice,
    MetricsStatusSummary,
    MetricsSummary,
    RollupWatermark,
)
from .services import _bucket_offset, bucket_floor, rollup_interval_seconds

__all__ = [
    "Freshness",
    "cached",
    "freshness",
    "kpis",
    "timeseries",
    "live_throughput",
    "stages_table",
    "token_usage",
    "tables",
    "request_structure",
    "history",
    "register_kpi",
    "percentile_from_histogram",
]

SUM_FIELDS = BATCH_SUM_FIELDS + TOKEN_SUM_FIELDS


# ---- Freshness -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Freshness:
    """How current the rollups are: `data_as_of` (the watermark) and whether it lags."""

    data_as_of: dt.datetime | None
    lagging: bool
    # Changes whenever rollup rows may have changed (a pass or a rebuild saved the watermark).
    version: str = ""

    def as_dict(self) -> dict:
        return {"data_as_of": self.data_as_of.isoformat() if self.data_as_of else None, "lagging": self.lagging}


def freshness(*, now: dt.datetime | None = None) -> Freshness:
    """The rollup watermark; lagging when it is more than two rollup intervals behind now."""
    now = now or timezone.now()
    row = (
        RollupWatermark.objects.filter(granularity=Granularity.MINUTE).values_list("rolled_until", "updated_at").first()
    )
    if row is None or row[0].year == 1:
        return Freshness(None, True, row[1].isoformat() if row else "")
    mark, updated = row
    return Freshness(mark, (now - mark).total_seconds() > 2 * rollup_interval_seconds(), updated.isoformat())


def cached(name: str, key_parts, fresh: Freshness, compute: Callable[[], object]):
    """`compute()` memoised in the shared cache until the rollups change (the watermark's version).

    Rollup rows only change when a pass or a rebuild saves the watermark, so answers keyed by its
    version are exact; the TTL bounds the drift of now-relative numbers (throughput, live line).
    """
    if not fresh.version:
        return compute()
    digest = hashlib.sha1(repr((name, key_parts, fresh.version)).encode(), usedforsecurity=False).hexdigest()
    key = f"metrics:v1:{name}:{digest}"
    value = cache.get(key)
    if value is None:
        value = compute()
        cache.set(key, value, timeout=max(5, int(rollup_interval_seconds())))
    return value


# ---- Derived numbers -----------------------------------------------------------------------
def percentile_from_histogram(counts: list[int], q: float, max_ms: float | None = None) -> float | None:
    """The q-quantile (0..1) of a latency histogram, interpolated inside its bucket."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            lower = LATENCY_BOUNDS_MS[i - 1] if i > 0 else 0.0
            upper = LATENCY_BOUNDS_MS[i] if i < len(LATENCY_BOUNDS_MS) else max(max_ms or lower, lower)
            if max_ms:
                upper = min(upper, max(max_ms, lower))
            return round(lower + (upper - lower) * (rank - seen) / count, 2)
        seen += count
    return None


def _ratio(num, den) -> float | None:
    return round(num / den, 6) if den else None


def _derive(row: dict, seconds: float | None = None) -> dict:
    """Headline numbers from summed rollup columns."""
    hist = [row.get(name) or 0 for name in LATENCY_FIELDS]
    requests = row.get("requests") or 0
    records_in = row.get("records_in") or 0
    batches = row.get("batches") or 0
    out = {
        "records_processed": records_in,
        "records_out": row.get("records_out") or 0,
        "records_filtered": row.get("records_filtered") or 0,
        "records_failed": row.get("records_failed") or 0,
        "batches": batches,
        "batches_failed": row.get("batches_failed") or 0,
        "success_rate": _ratio(batches - (row.get("batches_failed") or 0), batches),
        "record_failure_rate": _ratio(row.get("records_failed") or 0, records_in),
        "requests": requests,
        "requests_failed": row.get("requests_failed") or 0,
        "failure_rate": _ratio(row.get("requests_failed") or 0, requests),
        "prompt_tokens": row.get("prompt_tokens") or 0,
        "completion_tokens": row.get("completion_tokens") or 0,
        "tokens": (row.get("prompt_tokens") or 0) + (row.get("completion_tokens") or 0),
        # Part of the tokens spent on model calls made again after an attempt lost their answer.
        "retry_tokens": row.get("retry_tokens") or 0,
        "avg_latency_ms": round((row.get("latency_ms_sum") or 0) / requests, 2) if requests else None,
        "p95_latency_ms": percentile_from_histogram(hist, 0.95, row.get("latency_ms_max")),
        "avg_batch_ms": round((row.get("duration_ms_sum") or 0) / batches, 2) if batches else None,
    }
    if seconds is not None:
        out["throughput_per_s"] = round(records_in / seconds, 4) if seconds > 0 else None
    return out


def _sums() -> dict:
    """The summed columns of a grouped rollup read. Plain SUMs: every read groups, and a group's sum over NOT
    NULL columns is never NULL (COALESCE around each doubled what Django spent compiling a query, which was
    already three times what PostgreSQL spent running it)."""
    aggs: dict = {name: Sum(name) for name in SUM_FIELDS}
    aggs["latency_ms_max"] = Max("latency_ms_max")
    return aggs


def _rows(query: MetricsQuery, group: tuple[str, ...] = ()):
    """Rollup rows to sum for `query` grouped by `group`: the slice that answers it (a few rows per
    bucket and project), else every dimension key's summary row."""
    dimension = query.slice_dimension(group)
    if dimension is None or not slices_ready():
        return MetricsSummary.objects.all()
    return MetricsSlice.objects.filter(dimension=dimension)


def _status_rows(query: MetricsQuery):
    """Per-status rollup rows for `query`: the per-project slice unless a dimension is filtered."""
    if query.slice_dimension() == "total" and slices_ready():
        return MetricsStatusSlice.objects.all()
    return MetricsStatusSummary.objects.all()


_slices_seen = False


def slices_ready() -> bool:
    """Whether the slices hold what the summary holds: once they have rows, or while there is nothing to slice.

    A portal upgraded with history has summary rows and no slices until its first rollup pass fills them;
    until then reads sum the summary tables (slower, never zero). Slices are written and deleted in the same
    transaction as the summary rows they sum, so once a process has seen one it never probes again.
    """
    global _slices_seen
    if _slices_seen:
        return True
    if MetricsSlice.objects.exists():
        _slices_seen = True
        return True
    return not MetricsSummary.objects.exists()


def _merge(groups) -> dict:
    """Sums of several grouped rows of `_sums()` columns (the latency maximum: their maximum)."""
    out: dict = {}
    for group in groups:
        for name in SUM_FIELDS:
            out[name] = out.get(name, 0) + (group[name] or 0)
        out["latency_ms_max"] = max(out.get("latency_ms_max") or 0, group["latency_ms_max"] or 0)
    return out


# ---- KPIs ----------------------------------------------------------------------------------
KPI_LABELS = {
    "records_processed": _("Records processed"),
    "success_rate": _("Batch success rate"),
    "throughput_per_s": _("Throughput (records/s)"),
    "tokens": _("Tokens"),
    "requests": _("Model requests"),
    "failure_rate": _("Request failure rate"),
    "p95_latency_ms": _("p95 latency (ms)"),
}
# Extra KPI providers registered by other apps (e.g. tasks adds active runs): metrics imports
# neither tasks nor alerts, so they plug in here from their AppConfig.ready().
_extra_kpis: dict[str, tuple[str, Callable[[MetricsQuery], float | int | None]]] = {}


def register_kpi(key: str, label, provider: Callable[[MetricsQuery], float | int | None]) -> None:
    """Add a KPI card computed by another app (keep it to one cheap, bounded query)."""
    _extra_kpis[key] = (label, provider)


# A stage template is a stage kind's code ("filter"); the app that knows the kinds (tasks) registers
# how to name one in the reader's language. Without it the code is shown.
_stage_labelers: list[Callable[[str], object]] = []


def register_stage_labeler(labeler: Callable[[str], object]) -> None:
    """Set the function that names a stage template (its label in the active language, or None)."""
    _stage_labelers[:] = [labeler]


# Gateway keys live in the gateway app, which imports metrics; it registers how to name key ids (and list them).
_gateway_key_namers: list[Callable[[list[int] | None], dict[int, str]]] = []


def register_gateway_key_namer(namer: Callable[[list[int] | None], dict[int, str]]) -> None:
    """Set the function that names gateway key ids (None: every key, for the filter's choices)."""
    _gateway_key_namers[:] = [namer]


def gateway_key_names(ids: list[int] | None) -> dict[int, str]:
    """Names of gateway keys by id (ids without a name are shown as "#id")."""
    return _gateway_key_namers[0](ids) if _gateway_key_namers else {}


def gateway_usage(query: MetricsQuery) -> list[dict]:
    """Gateway traffic (calls through /v1/) per key and model version: requests, tokens, failures."""
    rows = list(
        query.filter_tiled(_rows(query, ("gateway_key_id", "model_version")))
        .exclude(gateway_key_id=0)
        .order_by()
        .values("gateway_key_id", "model_version")
        .annotate(**_sums())
        .filter(requests__gt=0)
        .order_by("gateway_key_id", "model_version")
    )
    return _gateway_out(rows)


def _gateway_out(rows: list[dict]) -> list[dict]:
    names = gateway_key_names(sorted({r["gateway_key_id"] for r in rows})) if rows else {}
    out = []
    for row in rows:
        d = _derive(row)
        out.append(
            {
                "gateway_key": row["gateway_key_id"],
                "key_name": names.get(row["gateway_key_id"]) or f"#{row['gateway_key_id']}",
                "model_version": row["model_version"],
                "requests": d["requests"],
                "requests_failed": d["requests_failed"],
                "prompt_tokens": d["prompt_tokens"],
                "completion_tokens": d["completion_tokens"],
                "tokens": d["tokens"],
                "p95_latency_ms": d["p95_latency_ms"],
            }
        )
    return out


def stage_label(code: str) -> str:
    """A stage template's name for people: its kind's label, else the code itself."""
    for labeler in _stage_labelers:
        label = labeler(code) if code else None
        if label:
            return str(label)
    return code


def _delta(cur, prev) -> dict:
    if cur is None or prev is None:
        return {"previous": prev, "delta": None, "delta_pct": None}
    delta = cur - prev
    return {
        "previous": prev,
        "delta": round(delta, 6) if isinstance(delta, float) else delta,
        "delta_pct": round(delta / prev * 100, 2) if prev else None,
    }


def kpis(query: MetricsQuery) -> dict:
    """Headline numbers for the window and the window before it, like for like, in one statement.

    A window still in progress (today, at 10:00) is compared with the same elapsed time of the window
    before (yesterday until 10:00), not with all of it: half a day against a full one read as -56 %.
    """
    prev = query.previous()
    now = query.now or timezone.now()
    elapsed = max(min(query.end, now) - query.start, dt.timedelta(0))
    partial = query.end > now
    prev_end = prev.start + elapsed if partial else prev.end
    cur_q, prev_q = query.tiles(), query.tiles(prev.start, prev_end)
    # One statement: rows grouped by which window(s) they tile (a bucket straddling the windows'
    # boundary counts in both), each group summed once. FILTERed aggregates per window cost twice
    # the expressions, each carrying the whole tiling condition, which Django compiled for longer
    # than the database ran the query.
    flags = {
        "in_cur": Case(When(cur_q, then=Value(1)), default=Value(0), output_field=IntegerField()),
        "in_prev": Case(When(prev_q, then=Value(1)), default=Value(0), output_field=IntegerField()),
    }
    qs = query.filter_dimensions(_rows(query)).filter(cur_q | prev_q).order_by()
    groups = list(qs.annotate(**flags).values(*flags).annotate(**_sums()))
    cur = _derive(_merge(g for g in groups if g["in_cur"]), elapsed.total_seconds())
    before = _derive(_merge(g for g in groups if g["in_prev"]), (prev_end - prev.start).total_seconds())
    values = {}
    for key in list(cur):
        values[key] = {"value": cur[key], **_delta(cur[key], before.get(key)), "partial": partial}
    for key, (_label, provider) in _extra_kpis.items():
        values[key] = {"value": provider(query), "previous": None, "delta": None, "delta_pct": None}
    return values


def kpi_cards(values: dict) -> list[dict]:
    """The KPI cards of the dashboard, in order, with labels."""
    cards = []
    labels = dict(KPI_LABELS)
    labels.update({key: label for key, (label, _p) in _extra_kpis.items()})
    for key, label in labels.items():
        if key in values:
            cards.append({"key": key, "label": label, **values[key]})
    return cards


# ---- Series and tables ---------------------------------------------------------------------
def timeseries(query: MetricsQuery) -> list[dict]:
    """One row per bucket of the window: records, failures, tokens, requests, throughput."""
    step = {"minute": 60, "hour": 3600, "day": 86400, "week": 7 * 86400}[query.granularity]
    rows = query.filter(_rows(query)).order_by().values("bucket").annotate(**_sums()).order_by("bucket")
    out = []
    for row in rows:
        d = _derive(row, step)
        out.append(
            {
                "bucket": row["bucket"].isoformat(),
                "records_processed": d["records_processed"],
                "records_out": d["records_out"],
                "records_failed": d["records_failed"],
                "throughput_per_s": d["throughput_per_s"],
                "requests": d["requests"],
                "requests_failed": d["requests_failed"],
                "tokens": d["tokens"],
                "p95_latency_ms": d["p95_latency_ms"],
            }
        )
    return out


LIVE_MINUTES = 60


def live_throughput(query: MetricsQuery) -> list[dict]:
    """Records per second over the last hour, per minute (the live line), with the query's dimensions."""
    now = query.now or timezone.now()
    start = bucket_floor(now - dt.timedelta(minutes=LIVE_MINUTES), Granularity.MINUTE)
    rows = (
        query.filter(_rows(query), granularity=Granularity.MINUTE, window=(start, now))
        .order_by()
        .values("bucket")
        .annotate(records=Coalesce(Sum("records_in"), 0), requests=Coalesce(Sum("requests"), 0))
        .order_by("bucket")
    )
    by_bucket = {r["bucket"]: r for r in rows}
    out = []
    bucket = start
    while bucket <= now:  # every minute, so a quiet minute shows as 0 rather than a gap
        r = by_bucket.get(bucket, {"records": 0, "requests": 0})
        out.append(
            {
                "bucket": bucket.isoformat(),
                "records_per_s": round(r["records"] / 60, 4),
                "requests_per_s": round(r["requests"] / 60, 4),
            }
        )
        bucket += dt.timedelta(minutes=1)
    return out


def stages_table(query: MetricsQuery) -> list[dict]:
    """One row per stage template: records in/out/failed, success rates, time, requests and tokens."""
    rows = (
        query.filter_tiled(_rows(query, ("stage_template",)))
        .order_by()
        .values("stage_template")
        .annotate(**_sums())
        .order_by("stage_template")
    )
    return _stages_out(rows)


def _stages_out(rows) -> list[dict]:
    out = []
    for row in rows:
        d = _derive(row)
        out.append(
            {
                "stage_template": row["stage_template"],
                "stage_label": stage_label(row["stage_template"]),
                "batches": d["batches"],
                "batches_failed": d["batches_failed"],
                "records_in": d["records_processed"],
                "records_out": d["records_out"],
                "records_filtered": d["records_filtered"],
                "records_failed": d["records_failed"],
                "success_rate": d["success_rate"],
                "avg_batch_ms": d["avg_batch_ms"],
                "requests": d["requests"],
                "tokens": d["tokens"],
                "retry_tokens": d["retry_tokens"],
                "p95_latency_ms": d["p95_latency_ms"],
            }
        )
    return out


def token_usage(query: MetricsQuery) -> list[dict]:
    """One row per model version with model calls: requests, tokens, failures and latency."""
    rows = (
        query.filter_tiled(_rows(query, ("model_version",)))
        .exclude(model_version="")
        .order_by()
        .values("model_version")
        .annotate(**_sums())
        .filter(requests__gt=0)
        .order_by("model_version")
    )
    return _tokens_out(rows)


def _tokens_out(rows) -> list[dict]:
    out = []
    for row in rows:
        d = _derive(row)
        out.append(
            {
                "model_version": row["model_version"],
                "requests": d["requests"],
                "requests_failed": d["requests_failed"],
                "prompt_tokens": d["prompt_tokens"],
                "completion_tokens": d["completion_tokens"],
                "tokens": d["tokens"],
                "retry_tokens": d["retry_tokens"],
                "avg_latency_ms": d["avg_latency_ms"],
                "p95_latency_ms": d["p95_latency_ms"],
            }
        )
    return out


# Each table of `tables()`: the slice that answers it unfiltered and the columns it groups by.
_TABLES = {
    "stages": ("stage", ("stage_template",)),
    "tokens": ("model", ("model_version",)),
    "gateway": ("key", ("gateway_key_id", "model_version")),
}


def tables(query: MetricsQuery) -> dict[str, list[dict]]:
    """The stage table, the token table and the gateway table (`stages_table`, `token_usage`, `gateway_usage`).

    When nothing but the project is filtered, each is one slice of the same table: one statement reads the
    three (a compiled query and a round trip instead of three, for the dashboard on a cold cache), ordered so
    each slice's rows come out in its own selector's order. Otherwise each selector answers on its own.
    """
    if not slices_ready() or any(query.slice_dimension(group) != name for name, group in _TABLES.values()):
        return {"stages": stages_table(query), "tokens": token_usage(query), "gateway": gateway_usage(query)}
    rows = (
        query.filter_tiled(MetricsSlice.objects.filter(dimension__in=[name for name, _g in _TABLES.values()]))
        .order_by()
        .values("dimension", "stage_template", "model_version", "gateway_key_id")
        .annotate(**_sums())
        # Within a slice the columns it does not keep hold one neutral value, so this is each selector's order.
        .order_by("dimension", "stage_template", "gateway_key_id", "model_version")
    )
    by_slice: dict[str, list[dict]] = {name: [] for name, _g in _TABLES.values()}
    for row in rows:
        by_slice[row["dimension"]].append(row)
    return {
        "stages": _stages_out(by_slice["stage"]),
        "tokens": _tokens_out([r for r in by_slice["model"] if r["model_version"] and r["requests"] > 0]),
        "gateway": _gateway_out([r for r in by_slice["key"] if r["gateway_key_id"] and r["requests"] > 0]),
    }


def request_structure(query: MetricsQuery) -> list[dict]:
    """Model requests by outcome status (the pie), largest first, with shares."""
    rows = list(
        query.filter_tiled(_status_rows(query))
        .order_by()
        .values("status_code")
        .annotate(requests_sum=Coalesce(Sum("requests"), 0), records_sum=Coalesce(Sum("records"), 0))
        .order_by("-requests_sum", "status_code")
    )
    total = sum(r["requests_sum"] for r in rows)
    return [
        {
            "status_code": r["status_code"],
            "requests": r["requests_sum"],
            "records": r["records_sum"],
            "share": _ratio(r["requests_sum"], total),
        }
        for r in rows
    ]


# ---- History (环比 period over period, 同比 year over year) ---------------------------------
PERIODS = ("day", "week", "month")
DEFAULT_PERIODS = {"day": 30, "week": 12, "month": 12}
MAX_PERIODS = {"day": 92, "week": 104, "month": 36}
HISTORY_METRICS = {
    "records_processed": ("records_in",),
    "records_out": ("records_out",),
    "records_failed": ("records_failed",),
    "tokens": ("prompt_tokens", "completion_tokens"),
    "requests": ("requests",),
    "requests_failed": ("requests_failed",),
    "batches": ("batches",),
}


def _local_midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC) - _bucket_offset()


def _local_date(value: dt.datetime) -> dt.date:
    return (value.astimezone(dt.UTC) + _bucket_offset()).date()


def _period_start(day: dt.date, period: str) -> dt.date:
    if period == "week":
        return day - dt.timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    return day


def _period_shift(day: dt.date, period: str, n: int) -> dt.date:
    if period == "day":
        return day + dt.timedelta(days=n)
    if period == "week":
        return day + dt.timedelta(weeks=n)
    month = day.month - 1 + n
    return dt.date(day.year + month // 12, month % 12 + 1, 1)


def _year_ago(day: dt.date, period: str) -> dt.date | None:
    """The period a year earlier: same date, the ISO week 52 weeks back, or the same month."""
    if period == "week":
        return day - dt.timedelta(weeks=52)
    try:
        return day.replace(year=day.year - 1)
    except ValueError:  # 29 February has no counterpart
        return None


def _pct(cur, base) -> float | None:
    return round((cur - base) / base * 100, 2) if base else None


def _first_data_day() -> dt.date | None:
    """The portal-local date of the earliest day rollup (any dimension), or None before any data."""
    days = (MetricsSlice.objects.filter(dimension="total") if slices_ready() else MetricsSummary.objects.all()).filter(
        granularity=Granularity.DAY
    )
    first = days.aggregate(m=Min("bucket"))["m"]
    return _local_date(first) if first is not None else None


def _history_last(query: MetricsQuery, period: str) -> dt.date:
    """The start of the last period `history` shows: the one holding the query's end."""
    return _period_start(_local_date(query.end - dt.timedelta(microseconds=1)), period)


def dimension_key(query: MetricsQuery) -> tuple:
    """The query's dimension filters (its window left out)."""
    return (query.project_id, query.pipeline_id, query.model_version, query.stage_template, query.gateway_key_id)


def history_key(query: MetricsQuery, *, period: str, periods: int | None = None, metric: str) -> tuple:
    """Everything `history(query, ...)` depends on besides the rollups: the last period (not the window's exact
    start and end), the number of periods, the metric, today's date (the period in progress) and the filters.
    Windows ending in the same period share one answer."""
    today = _local_date(query.now or timezone.now())
    last = _history_last(query, period)
    return (
        period,
        periods or DEFAULT_PERIODS[period],
        metric,
        last.isoformat(),
        today.isoformat(),
        dimension_key(query),
    )


def history(
    query: MetricsQuery, *, period: str = "day", periods: int | None = None, metric: str = "records_processed"
) -> list[dict]:
    """The last `periods` periods up to the query's end, each with 环比 and 同比 deltas."""
    periods = periods or DEFAULT_PERIODS[period]
    last = _history_last(query, period)
    starts = [_period_shift(last, period, -i) for i in range(periods - 1, -1, -1)]
    before_first = _period_shift(starts[0], period, -1)
    wanted = {s: _year_ago(s, period) for s in starts}
    year_ago = [d for d in wanted.values() if d]
    cur_window = (_local_midnight(before_first), _local_midnight(_period_shift(last, period, 1)))
    windows = [cur_window]
    if year_ago:
        windows.append((_local_midnight(min(year_ago)), _local_midnight(_period_shift(max(year_ago), period, 1))))
    cond = Q()
    for w_start, w_end in windows:
        cond |= Q(bucket__gte=w_start, bucket__lt=w_end)
    columns = HISTORY_METRICS[metric]
    # The coarsest rollup that answers: a row per period (day, week or month) and dimension key,
    # each bucket starting at the period's local midnight.
    qs = query.filter_dimensions(_rows(query).filter(cond, granularity=period)).order_by()
    rows = qs.values("bucket").annotate(**{f"v_{c}": Coalesce(Sum(c), 0) for c in columns})
    values: dict[dt.date, int] = {}
    for row in rows:
        key = _period_start(_local_date(row["bucket"]), period)
        values[key] = values.get(key, 0) + sum(row[f"v_{c}"] for c in columns)
    # A period that ended before the first day of any data has no value (None), not zero: a chart of a
    # young portal shows a gap for "same period last year", and no -100 % or +inf % against nothing.
    first = _first_data_day()

    def value_of(start: dt.date | None):
        if start is None or first is None or _period_shift(start, period, 1) <= first:
            return None
        return values.get(start, 0)

    # The period holding "now" is still in progress: day rollups cannot cut the period before at the
    # same elapsed time, so it is flagged as partial and not compared (no -56 % for a week just begun).
    today = _local_date(query.now or timezone.now())
    out = []
    for s in starts:
        cur = value_of(s)
        prev = value_of(_period_shift(s, period, -1))
        last_year = value_of(wanted[s])
        partial = s <= today < _period_shift(s, period, 1)
        if partial:
            prev_cmp = last_year_cmp = None
        else:
            prev_cmp, last_year_cmp = prev, last_year
        both = cur is not None and prev_cmp is not None
        out.append(
            {
                "period": s.isoformat(),
                "partial": partial,
                "value": cur,
                "previous": prev,
                "pop_delta": cur - prev if both else None,
                "pop_pct": _pct(cur, prev) if both else None,
                "last_year": last_year,
                "yoy_delta": cur - last_year_cmp if cur is not None and last_year_cmp is not None else None,
                "yoy_pct": _pct(cur, last_year_cmp) if cur is not None and last_year_cmp is not None else None,
            }
        )
    return out
