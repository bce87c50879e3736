"""Raw event services, the latency histogram and percentile math, and local-time day buckets."""

import datetime as dt

import pytest
from django.core.exceptions import ValidationError

from metrics.choices import Granularity
from metrics.models import LATENCY_FIELDS, BatchEvent, MetricsSummary, TokenUsage
from metrics.selectors import percentile_from_histogram
from metrics.services import (
    batch_event_record,
    bucket_floor,
    latency_histogram,
    metrics_rollup_rebuild,
    token_usage_record,
    token_usage_record_many,
)

from .factories import T0

pytestmark = pytest.mark.django_db
USAGE = {
    "ts": T0,
    "project_id": 1,
    "pipeline_id": 10,
    "run_id": None,
    "stage_template": "model_inference",
    "model_name": "sentiment",
    "model_version": "v1",
    "status_code": "OK",
    "requests": 4,
    "records": 4,
    "prompt_tokens": 100,
    "completion_tokens": 20,
    "latency_ms_sum": 0.0,
    "latency_ms_max": 0.0,
}


def test_it_records_token_usage_with_a_histogram_from_samples():
    token_usage_record(**{**USAGE, "latency_ms_samples": [3.0, 40.0, 45.0, 20000.0]})
    event = TokenUsage.objects.get()
    assert (event.lat_le_5, event.lat_le_50, event.lat_inf) == (1, 2, 1)
    assert event.latency_ms_sum == pytest.approx(20088.0) and event.latency_ms_max == 20000.0


def test_it_records_many_in_one_insert_and_uses_the_mean_without_samples(django_assert_num_queries):
    rows = [{**USAGE, "latency_ms_sum": 400.0}, {**USAGE, "status_code": "UNAVAILABLE", "latency_ms_sum": 8.0}]
    with django_assert_num_queries(1):
        token_usage_record_many(rows)
    assert sorted(TokenUsage.objects.values_list("lat_le_100", "lat_le_5")) == [(0, 4), (4, 0)]


def test_it_refuses_bad_events_naming_the_field():
    with pytest.raises(ValidationError) as exc:
        token_usage_record(**{**USAGE, "model_name": ""})
    assert "model_name" in exc.value.message_dict
    with pytest.raises(ValidationError) as exc:
        batch_event_record(
            ts=T0,
            project_id=1,
            pipeline_id=None,
            run_id=None,
            stage_template="x" * 51,
            records_in=1,
            records_out=1,
            records_filtered=0,
            records_failed=0,
            duration_ms=1.0,
        )
    assert "stage_template" in exc.value.message_dict
    assert not BatchEvent.objects.exists()


def test_percentiles_merge_across_buckets():
    hist = latency_histogram(samples=[1.0] * 90 + [300.0] * 10, requests=100, latency_ms_sum=0)
    counts = [hist[f] for f in LATENCY_FIELDS]
    assert percentile_from_histogram(counts, 0.5) == pytest.approx(5 * 50 / 90, abs=0.01)
    assert 250 < percentile_from_histogram(counts, 0.95) <= 500
    assert percentile_from_histogram(counts, 0.95, max_ms=320.0) <= 320.0
    assert percentile_from_histogram([0] * len(LATENCY_FIELDS), 0.95) is None


def test_day_buckets_follow_the_portal_time_zone(settings):
    settings.TIME_ZONE = "Asia/Shanghai"  # UTC+8, no daylight saving
    # 20:00 UTC on the 9th is 04:00 on the 10th in Shanghai.
    ts = dt.datetime(2026, 3, 9, 20, 0, tzinfo=dt.UTC)
    batch_event_record(
        ts=ts,
        project_id=1,
        pipeline_id=1,
        run_id=None,
        stage_template="filter",
        records_in=5,
        records_out=5,
        records_filtered=0,
        records_failed=0,
        duration_ms=1.0,
    )
    metrics_rollup_rebuild(
        start=ts - dt.timedelta(days=2), end=ts + dt.timedelta(days=2), now=ts + dt.timedelta(days=1)
    )
    day = MetricsSummary.objects.get(granularity=Granularity.DAY)
    assert day.bucket == dt.datetime(2026, 3, 9, 16, 0, tzinfo=dt.UTC) == bucket_floor(ts, Granularity.DAY)
    assert MetricsSummary.objects.get(granularity=Granularity.HOUR).bucket == ts
