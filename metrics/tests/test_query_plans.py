"""PostgreSQL plans: no dashboard selector scans a big rollup table sequentially.

The rollup tables are filled with a realistic shape (800 days of day rows, 35 days of hours, 3
days of minutes, their weeks and months, 150 dimension keys), analysed, and every selector is run
for the windows and filters the dashboard offers. Each rollup query it sent is EXPLAINed; a
sequential scan of any rollup relation holding more than a day of data and more than
BIG_ROWS rows fails the test (a scan of a few thousand narrow rows is cheaper than an index walk,
and no relation that small holds much history). The slices are built from those rows by the
rollup's own statement; a selector whose filters a slice answers (none, or a project) must read
the slices, never the summary tables.
"""

import datetime as dt
import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from metrics import selectors
from metrics.choices import Granularity
from metrics.filtersets import metrics_query
from metrics.models import MetricsStatusSummary, MetricsSummary, RollupWatermark
from metrics.services import _roll_slices, bucket_floor

pytestmark = pytest.mark.django_db
BIG_ROWS = 10_000
ROLLUP_TABLES = ("metrics_summary", "metrics_status_summary", "metrics_slice", "metrics_status_slice")
# The full tables, as a FROM clause names them: a read that a slice answers must not name them.
FULL_TABLES = ('"metrics_summary"', '"metrics_status_summary"')
DIMENSIONS = "(SELECT p, s, m FROM generate_series(1, 10) p, generate_series(1, 5) s, generate_series(1, 3) m) d"


def _fill(model, granularity: str, start: dt.datetime, count: int, step: str, statuses: bool = False) -> None:
    values = {
        "granularity": f"'{granularity}'",
        "bucket": f"%s::timestamptz + (g * interval '{step}')",
        "project_id": "mod(d.p - 1, 3) + 1",
        "pipeline_id": "d.p",
        "stage_template": "'stage' || d.s",
        "model_version": "CASE WHEN d.s = 5 THEN 'model:v' || d.m ELSE '' END",
        "status_code": "'OK'",
        "updated_at": "now()",
    }
    columns, exprs = [], []
    for field in model._meta.concrete_fields:
        if field.primary_key:
            continue
        columns.append(field.column)
        exprs.append(values.get(field.column, "mod(g, 7) + d.m"))
    table = model._meta.db_table
    sql = (
        f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(exprs)} "  # noqa: S608
        f"FROM generate_series(0, {count - 1}) g, {DIMENSIONS} "
        "ON CONFLICT DO NOTHING"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [start])


@pytest.fixture
def big_rollups():
    if connection.vendor != "postgresql":
        pytest.skip("plans are checked on PostgreSQL (SQLite has no planner choices of this kind)")
    now = timezone.now()
    today = bucket_floor(now, Granularity.DAY)
    for model in (MetricsSummary, MetricsStatusSummary):
        _fill(model, "day", today - dt.timedelta(days=799), 800, "1 day")
        _fill(model, "hour", today - dt.timedelta(days=35), 36 * 24, "1 hour")
        _fill(model, "minute", today - dt.timedelta(days=2), 3 * 24 * 60, "1 minute")
        _fill(model, "week", bucket_floor(today - dt.timedelta(days=799), Granularity.WEEK), 115, "1 week")
        _fill(model, "month", bucket_floor(today - dt.timedelta(days=799), Granularity.MONTH), 27, "1 month")
    for gran in Granularity.values:
        _roll_slices(gran, today - dt.timedelta(days=900), now + dt.timedelta(days=1), now)
    RollupWatermark.objects.create(granularity=Granularity.MINUTE, rolled_until=now)
    with connection.cursor() as cursor:
        for table in ROLLUP_TABLES:
            cursor.execute(f"ANALYZE {table}")
    return now


def _relation_stats() -> dict[str, tuple[int, dt.timedelta]]:
    """Rows and time span of every rollup relation (partitions and parents)."""
    stats = {}
    with connection.cursor() as cursor:
        for parent in ROLLUP_TABLES:
            cursor.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = %s::regclass",
                [parent],
            )
            for (name,) in [*cursor.fetchall(), (parent,)]:
                cursor.execute(f"SELECT count(*), max(bucket) - min(bucket) FROM {name}")  # noqa: S608
                rows, span = cursor.fetchone()
                stats[name] = (rows, span or dt.timedelta(0))
    return stats


def _seq_scans(plan: dict):
    """The relations scanned sequentially for a small part of their rows.

    A scan that keeps at least half of a relation's rows is what the query needs (a two-year history
    of a two-year week table reads the whole table; walking an index there costs more).
    """
    if plan.get("Node Type") == "Seq Scan":
        kept, removed = plan["Actual Rows"], plan.get("Rows Removed by Filter", 0)
        if kept < (kept + removed) / 2:
            yield plan["Relation Name"]
    for child in plan.get("Plans", []):
        yield from _seq_scans(child)


WINDOWS = [
    {"range": "today"},
    {"range": "7d"},
    {"range": "30d"},
    {"range": "custom", "granularity": "hour"},  # start filled in: 3 days ago
    {"range": "custom"},  # start filled in: 400 days ago
]
HISTORIES = [("day", 30), ("day", 92), ("week", 12), ("week", 104), ("month", 12), ("month", 36)]
FILTERS = [{}, {"project": "2"}, {"pipeline": "4"}, {"model_version": "model:v2"}, {"stage_template": "stage3"}]


def test_no_selector_plans_a_sequential_scan_of_a_big_rollup_table(big_rollups):
    now = big_rollups
    stats = _relation_stats()
    # The data set must make the rule bite: each granularity's partition is big and spans days.
    for name in ("metrics_summary_day", "metrics_summary_hour", "metrics_summary_minute", "metrics_slice_day"):
        assert stats[name][0] > BIG_ROWS and stats[name][1] > dt.timedelta(days=1), name
    big = {name for name, (rows, span) in stats.items() if rows > BIG_ROWS and span > dt.timedelta(days=1)}

    calls = []
    for window in WINDOWS:
        window = dict(window)
        if window["range"] == "custom":
            days = 3 if window.get("granularity") == "hour" else 400
            window["start"] = (now - dt.timedelta(days=days)).isoformat()
        for filters in FILTERS:
            query = metrics_query({**window, **filters}, now=now)
            for fn in (
                selectors.kpis,
                selectors.timeseries,
                selectors.live_throughput,
                selectors.stages_table,
                selectors.token_usage,
                selectors.gateway_usage,
                selectors.tables,
                selectors.request_structure,
            ):
                calls.append((fn.__name__, window, filters, lambda fn=fn, q=query: fn(q)))
            for period, periods in HISTORIES:
                calls.append(
                    (
                        f"history {period}x{periods}",
                        window,
                        filters,
                        lambda q=query, p=period, n=periods: selectors.history(q, period=p, periods=n),
                    )
                )

    failures = []
    checked = sliced = 0
    for name, window, filters, call in calls:
        with CaptureQueriesContext(connection) as captured:
            call()
        for query in captured.captured_queries:
            sql = query["sql"]
            if not any(table in sql for table in ROLLUP_TABLES):
                continue
            if filters in ({}, {"project": "2"}):
                sliced += 1
                if any(table in sql for table in FULL_TABLES):
                    failures.append(f"{name} {window} {filters}: reads the summary table, not its slices\n{sql[:300]}")
            with connection.cursor() as cursor:
                cursor.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}")
                plan = cursor.fetchone()[0]
            plan = plan if isinstance(plan, list) else json.loads(plan)
            checked += 1
            scanned = set(_seq_scans(plan[0]["Plan"])) & big
            if scanned:
                failures.append(f"{name} {window} {filters}: Seq Scan on {sorted(scanned)}\n{sql[:300]}")
    assert checked > 300 and sliced > 100
    kinds = sorted({f.split(" {")[0] for f in failures})
    assert not failures, f"{len(failures)} failing queries in {kinds}:\n\n" + "\n\n".join(failures[:5])
