"""Rollups: idempotent upserts, late events, watermark, rebuild and retention."""

import datetime as dt

import pytest
from django.core.management import call_command

from metrics.choices import Granularity
from metrics.models import BatchEvent, MetricsStatusSummary, MetricsSummary, RollupWatermark, TokenUsage
from metrics.services import late_window, metrics_prune, metrics_rollup, metrics_rollup_rebuild

from .factories import T0, BatchEventFactory, TokenUsageFactory

pytestmark = pytest.mark.django_db
M = dt.timedelta(minutes=1)


def _rows(model=MetricsSummary):
    fields = [f.attname for f in model._meta.concrete_fields if f.attname not in ("id", "updated_at")]
    return sorted(tuple(r) for r in model.objects.order_by().values_list(*fields))


def _get(gran, bucket, **dims):
    return MetricsSummary.objects.get(granularity=gran, bucket=bucket, **dims)


def test_it_rolls_raw_events_into_minute_hour_and_day_buckets():
    BatchEventFactory(ts=T0 + dt.timedelta(seconds=5))
    BatchEventFactory(ts=T0 + dt.timedelta(seconds=50), failed=True)
    BatchEventFactory(ts=T0 + M + dt.timedelta(seconds=1), pipeline_id=None)
    TokenUsageFactory(ts=T0 + dt.timedelta(seconds=7), histogram=[3.0] * 9 + [700.0])
    TokenUsageFactory(ts=T0 + dt.timedelta(seconds=8), unavailable=True, requests=2, records=2)
    metrics_rollup(now=T0 + 2 * M)

    minute = _get(Granularity.MINUTE, T0, pipeline_id=10, stage_template="filter", model_version="")
    assert (minute.batches, minute.batches_failed, minute.records_in, minute.records_failed) == (2, 1, 200, 102)
    assert minute.requests == 0
    no_pipeline = _get(Granularity.MINUTE, T0 + M, pipeline_id=0, stage_template="filter")
    assert no_pipeline.records_in == 100
    tokens = _get(Granularity.MINUTE, T0, stage_template="model_inference", model_version="v1")
    assert (tokens.requests, tokens.requests_failed, tokens.prompt_tokens, tokens.completion_tokens) == (
        12,
        2,
        1000,
        200,
    )
    assert (tokens.lat_le_5, tokens.lat_le_1000, tokens.lat_le_250) == (9, 1, 2)  # 2 failed at mean 200 ms
    hour = _get(Granularity.HOUR, T0, pipeline_id=10, stage_template="filter")
    day = _get(Granularity.DAY, T0.replace(hour=0), pipeline_id=10, stage_template="filter")
    assert hour.records_in == day.records_in == 200
    statuses = dict(
        MetricsStatusSummary.objects.filter(granularity=Granularity.DAY).values_list("status_code", "requests")
    )
    assert statuses == {"OK": 10, "UNAVAILABLE": 2}


def test_it_writes_the_same_rows_when_run_twice():
    for i in range(5):
        BatchEventFactory(ts=T0 + i * M, stage_template=f"s{i % 2}")
        TokenUsageFactory(ts=T0 + i * M, model_version=f"v{i % 3}")
    metrics_rollup(now=T0 + 6 * M)
    first, first_status = _rows(), _rows(MetricsStatusSummary)
    metrics_rollup(now=T0 + 6 * M)
    metrics_rollup_rebuild(start=T0 - dt.timedelta(days=1), end=T0 + dt.timedelta(days=1), now=T0 + 6 * M)
    assert _rows() == first
    assert _rows(MetricsStatusSummary) == first_status
    assert len(first) == 10 + 5 + 5  # 2 keys in each of 5 minutes; 2 stage + 3 model keys per hour and day


def test_it_counts_a_late_event_in_the_trailing_window_and_after_it():
    BatchEventFactory(ts=T0)
    metrics_rollup(now=T0 + 2 * M)
    # Arrives after the pass, stamped inside the trailing window.
    BatchEventFactory(ts=T0 + dt.timedelta(seconds=30))
    metrics_rollup(now=T0 + 3 * M)
    assert _get(Granularity.MINUTE, T0, stage_template="filter").batches == 2
    # Arrives an hour later, stamped long before the trailing window: found by its new id.
    BatchEventFactory(ts=T0 + dt.timedelta(seconds=40))
    metrics_rollup(now=T0 + dt.timedelta(hours=1))
    assert _get(Granularity.MINUTE, T0, stage_template="filter").batches == 3
    assert _get(Granularity.HOUR, T0, stage_template="filter").batches == 3
    assert _get(Granularity.DAY, T0.replace(hour=0), stage_template="filter").records_in == 300


def test_it_keeps_a_watermark():
    BatchEventFactory(ts=T0)
    result = metrics_rollup(now=T0 + 2 * M)
    marks = dict(RollupWatermark.objects.values_list("granularity", "rolled_until"))
    assert marks == dict.fromkeys(Granularity.values, T0 + 2 * M)
    assert result.start == T0
    second = metrics_rollup(now=T0 + 5 * M)
    assert second.start == T0 + 2 * M - late_window()


def test_it_prunes_only_rolled_up_raw_events(settings):
    settings.RAW_RETENTION_DAYS = 7
    old = T0 - dt.timedelta(days=30)
    BatchEventFactory(ts=old)
    TokenUsageFactory(ts=old)
    assert metrics_prune(now=T0).batch_events == 0  # never rolled up: kept
    metrics_rollup_rebuild(start=old - dt.timedelta(days=1), end=old + dt.timedelta(days=1), now=T0)
    assert metrics_prune(now=T0).batch_events == 0  # rebuilt, but no watermark yet: still kept
    metrics_rollup(now=T0)
    # Arrives after the pass: its id is above the watermark's, so it is kept for the next pass.
    late = BatchEventFactory(ts=old)
    result = metrics_prune(now=T0)
    assert (result.batch_events, result.token_usage) == (1, 1)
    assert list(BatchEvent.objects.values_list("id", flat=True)) == [late.id]
    assert TokenUsage.objects.count() == 0
    # The rollups survive the prune.
    assert _get(Granularity.DAY, old.replace(hour=0), stage_template="filter").records_in == 100


def test_it_rebuilds_a_range_from_the_command():
    BatchEventFactory(ts=T0)
    call_command("rollup_rebuild", "--start", "2026-03-10", "--end", "2026-03-11", verbosity=0)
    assert _get(Granularity.DAY, T0.replace(hour=0), stage_template="filter").batches == 1


def test_its_first_pass_rolls_up_older_history_too():
    BatchEventFactory(ts=T0 - dt.timedelta(days=30))
    BatchEventFactory(ts=T0 - M)
    metrics_rollup(now=T0)
    assert _get(Granularity.DAY, (T0 - dt.timedelta(days=30)).replace(hour=0), stage_template="filter").batches == 1
    assert not MetricsSummary.objects.filter(granularity=Granularity.MINUTE, bucket__lt=T0 - dt.timedelta(days=8))
    assert _get(Granularity.MINUTE, T0 - M, stage_template="filter").batches == 1


def test_a_rebuild_up_to_now_moves_the_watermark():
    BatchEventFactory(ts=T0 - dt.timedelta(days=3))
    metrics_rollup_rebuild(start=T0 - dt.timedelta(days=10), end=T0 + M, now=T0)
    mark = RollupWatermark.objects.get(granularity=Granularity.MINUTE)
    assert mark.rolled_until == T0 and mark.last_batch_event_id == BatchEvent.objects.get().id
    assert metrics_rollup(now=T0 + M).start == T0 - late_window()
