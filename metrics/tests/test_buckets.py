"""The SQL bucket floor (per backend: SQLite's own date functions, PostgreSQL's date_trunc) is the
Python one, at every granularity, in UTC and in a zone east of UTC, at the edges where it can slip."""

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from metrics.choices import Granularity
from metrics.models import TokenUsage
from metrics.services import _bucket_expr, bucket_floor

from .factories import TokenUsageFactory

EDGES = [
    datetime(2026, 11, 29, 23, 59, 59, 999999, tzinfo=UTC),  # Sunday, last microsecond (UTC)
    datetime(2026, 11, 30, 0, 0, tzinfo=UTC),  # Monday 00:00 UTC
    datetime(2026, 11, 30, 15, 59, 30, tzinfo=UTC),  # 23:59:30 in Shanghai, Monday
    datetime(2026, 11, 30, 16, 0, tzinfo=UTC),  # 00:00 Tuesday (1 December) in Shanghai
    datetime(2026, 12, 31, 16, 30, 12, 5, tzinfo=UTC),  # New Year in Shanghai, not in UTC
    datetime(2027, 1, 3, 7, 7, 7, tzinfo=UTC),  # a Sunday in both
    datetime(2028, 2, 29, 12, 0, 1, tzinfo=UTC),  # leap day
]


@pytest.mark.django_db
@pytest.mark.parametrize("zone", ["UTC", "Asia/Shanghai"])
@pytest.mark.parametrize("granularity", [g for g, _label in Granularity.choices])
def test_the_sql_bucket_floor_is_the_python_one(settings, zone, granularity):
    settings.TIME_ZONE = zone
    timezone.deactivate()
    for ts in EDGES:
        TokenUsageFactory(ts=ts)
    got = dict(TokenUsage.objects.order_by().annotate(b=_bucket_expr("ts", granularity)).values_list("ts", "b"))
    assert got == {ts: bucket_floor(ts, granularity) for ts in EDGES}
    # The floors are bucket starts a rollup can key on: floor(floor(x)) == floor(x), and the next one is later.
    for ts in EDGES:
        floor = bucket_floor(ts, granularity)
        assert bucket_floor(floor, granularity) == floor and floor <= ts < floor + timedelta(days=32)
