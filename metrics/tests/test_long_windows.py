"""Long windows: totals read whole months from month rows and the edges from day rows, exactly once."""

import datetime as dt

import pytest
from django.utils import timezone

from metrics import selectors
from metrics.choices import Granularity
from metrics.filtersets import metrics_query
from metrics.services import bucket_floor, metrics_rollup_rebuild

from .factories import BatchEventFactory, TokenUsageFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def spread():
    """One batch of 100 records and one model call group (3 requests) every 5 days for 300 days."""
    now = timezone.now()
    today = bucket_floor(now, Granularity.DAY)
    days = [today - dt.timedelta(days=d) for d in range(0, 300, 5)]
    for i, day in enumerate(days):
        BatchEventFactory(ts=day + dt.timedelta(hours=3), records_in=100 + i)
        TokenUsageFactory(ts=day + dt.timedelta(hours=3), requests=3, records=3)
    metrics_rollup_rebuild(start=today - dt.timedelta(days=400), end=now, now=now)
    return {"now": now, "days": days}


@pytest.mark.parametrize(("start_days", "end_days"), [(290, 3), (200, 100), (61, 0), (45, 44), (299, 0)])
def test_totals_of_any_window_match_the_events_inside_it(spread, start_days, end_days):
    now, days = spread["now"], spread["days"]
    today = bucket_floor(now, Granularity.DAY)
    start, end = today - dt.timedelta(days=start_days), today - dt.timedelta(days=end_days - 1)
    query = metrics_query({"range": "custom", "start": start.isoformat(), "end": end.isoformat()}, now=now)
    inside = [(i, d) for i, d in enumerate(days) if start <= d < end]
    expected_records = sum(100 + i for i, _d in inside)
    kpis = selectors.kpis(query)
    assert kpis["records_processed"]["value"] == expected_records
    assert kpis["requests"]["value"] == 3 * len(inside)
    stages = {row["stage_template"]: row for row in selectors.stages_table(query)}
    assert stages.get("filter", {}).get("records_in", 0) == expected_records
    structure = {row["status_code"]: row["requests"] for row in selectors.request_structure(query)}
    assert structure.get("OK", 0) == 3 * len(inside)
    tokens = selectors.token_usage(query)
    assert sum(row["requests"] for row in tokens) == 3 * len(inside)


def test_a_long_window_is_charted_by_week(spread):
    now = spread["now"]
    query = metrics_query({"range": "custom", "start": (now - dt.timedelta(days=200)).date().isoformat()}, now=now)
    assert query.granularity == Granularity.WEEK
    series = selectors.timeseries(query)
    assert 28 <= len(series) <= 30
    assert sum(row["records_processed"] for row in series) >= selectors.kpis(query)["records_processed"]["value"]
