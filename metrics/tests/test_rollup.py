"""Rollups: idempotent upserts, late events, watermark, rebuild and retention."""

import datetime as dt

import pytest
from django.core.management import call_command
from django.db.models import Count, Sum

from dataflare_portal.core.config import config_set
from metrics.choices import Granularity
from metrics.models import (
    BatchEvent,
    MetricsStatusSummary,
    MetricsSummary,
    RollupRebuild,
    RollupWatermark,
    TokenUsage,
)
from metrics.services import bucket_floor, late_window, metrics_prune, metrics_rollup, metrics_rollup_rebuild

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
    # 2 keys in each of 5 minutes; 2 stage + 3 model keys per hour, day, week and month.
    per_granularity = dict(MetricsSummary.objects.order_by().values_list("granularity").annotate(n=Count("id")))
    assert per_granularity == {"minute": 10, "hour": 5, "day": 5, "week": 5, "month": 5}


@pytest.mark.parametrize("zone", ["UTC", "Asia/Shanghai"])
def test_it_counts_a_late_event_in_the_trailing_window_and_after_it(settings, zone):
    # In a zone east of UTC the late minutes came back from PostgreSQL as naive datetimes and the pass
    # crashed comparing them with aware ones.
    settings.TIME_ZONE = zone
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
    day = bucket_floor(T0, Granularity.DAY)
    assert _get(Granularity.DAY, day, stage_template="filter").records_in == 300


def test_an_event_committed_after_a_pass_read_past_its_id_counts_when_its_minute_leaves_the_late_window():
    # A worker's transaction took an id, a pass read MAX(id) past it, then the transaction committed: no new
    # id announces the event. The minute is recomputed from raw once more as it leaves the late window (the
    # last pass that would have recomputed it had every pass recomputed the whole window); the passes in
    # between read only what arrived since the previous one.
    TokenUsageFactory(ts=T0 + dt.timedelta(seconds=10))
    gap = TokenUsageFactory(ts=T0 + dt.timedelta(seconds=20))
    TokenUsageFactory(ts=T0 + dt.timedelta(seconds=70))
    gap_id = gap.id
    gap.delete()
    metrics_rollup(now=T0 + 2 * M)
    TokenUsageFactory(id=gap_id, ts=T0 + dt.timedelta(seconds=80))  # the late committer, minute T0 + 1 min

    def minute():
        return _get(Granularity.MINUTE, T0 + M, stage_template="model_inference").requests

    for now in (T0 + 2 * M + dt.timedelta(seconds=30), T0 + 3 * M + dt.timedelta(seconds=30)):
        metrics_rollup(now=now)
        assert minute() == 10  # still inside the late window: not re-read
    metrics_rollup(now=T0 + 4 * M)  # the minute leaves the window
    assert minute() == 20
    assert _get(Granularity.HOUR, T0, stage_template="model_inference").requests == 30
    assert _get(Granularity.DAY, T0.replace(hour=0), stage_template="model_inference").requests == 30


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


def test_a_rebuild_writes_only_the_buckets_of_its_range():
    # docs/metrics.md: a rebuild recomputes every bucket in [start, end); events after the range (the next
    # day here, never rolled up) must not reach any rollup row, whatever the granularity.
    day = T0.replace(hour=0)
    BatchEventFactory(ts=T0)
    inside = TokenUsageFactory(ts=T0)
    BatchEventFactory(ts=T0 + dt.timedelta(days=1))
    TokenUsageFactory(ts=T0 + dt.timedelta(days=1))
    metrics_rollup_rebuild(start=day, end=day + dt.timedelta(days=1), now=T0 + dt.timedelta(days=2))
    finer = MetricsSummary.objects.exclude(granularity__in=(Granularity.WEEK, Granularity.MONTH))
    assert finer.exists()
    assert not finer.filter(bucket__gte=day + dt.timedelta(days=1)).exists()
    assert not MetricsStatusSummary.objects.filter(bucket__gte=day + dt.timedelta(days=1)).exists()
    assert _get(Granularity.DAY, day, stage_template="filter").batches == 1
    day_status = MetricsStatusSummary.objects.filter(granularity=Granularity.DAY, bucket=day)
    assert day_status.aggregate(n=Sum("requests"))["n"] == inside.requests


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


def _config(**values):
    for key, value in values.items():
        config_set(key=key, value=value, actor=None)


def _day_sums(granularity):
    return dict(
        MetricsSummary.objects.filter(granularity=granularity)
        .order_by()
        .values_list("stage_template")
        .annotate(s=Sum("records_in"))
        .values_list("stage_template", "s")
    )


def test_it_compacts_hours_past_the_hour_horizon_into_their_days():
    _config(raw_retention_days=7, minute_rollup_retention_days=7, hour_rollup_retention_days=10)
    for days_ago in (3, 12, 13):
        BatchEventFactory(ts=T0 - dt.timedelta(days=days_ago), stage_template=f"s{days_ago}")
    # Rolled up while they were recent: the old days got hour rows then.
    metrics_rollup(now=T0 - dt.timedelta(days=11))
    metrics_rollup(now=T0)
    assert set(
        MetricsSummary.objects.filter(granularity=Granularity.HOUR).values_list("stage_template", flat=True)
    ) == {
        "s3",
        "s12",
        "s13",
    }
    days_before = _day_sums(Granularity.DAY)
    result = metrics_prune(now=T0)
    # Hours of the 12- and 13-day-old days go; the 3-day-old hour stays; every day row stays.
    hours = MetricsSummary.objects.filter(granularity=Granularity.HOUR)
    assert set(hours.values_list("stage_template", flat=True)) == {"s3"}
    assert result.hour_rollups == 2
    assert _day_sums(Granularity.DAY) == days_before == {"s3": 100, "s12": 100, "s13": 100}


def test_the_hour_horizon_never_precedes_the_minute_horizon():
    # Days after the minute horizon are re-rolled from their hours: those hours must survive.
    _config(raw_retention_days=30, minute_rollup_retention_days=30, hour_rollup_retention_days=2)
    BatchEventFactory(ts=T0 - dt.timedelta(days=5))
    metrics_rollup(now=T0)
    metrics_prune(now=T0)
    assert MetricsSummary.objects.filter(granularity=Granularity.HOUR).exists()


def test_a_rebuild_skips_hours_for_days_past_the_hour_horizon():
    _config(hour_rollup_retention_days=10)
    BatchEventFactory(ts=T0 - dt.timedelta(days=40))
    BatchEventFactory(ts=T0 - dt.timedelta(days=2))
    metrics_rollup_rebuild(start=T0 - dt.timedelta(days=60), end=T0, now=T0)
    hours = set(MetricsSummary.objects.filter(granularity=Granularity.HOUR).values_list("bucket", flat=True))
    assert hours == {T0 - dt.timedelta(days=2)}
    assert _day_sums(Granularity.DAY) == {"filter": 200}


def test_a_killed_rebuild_resumes_where_it_stopped():
    for days_ago in range(1, 7):
        BatchEventFactory(ts=T0 - dt.timedelta(days=days_ago), stage_template=f"s{days_ago}")
    start, end = (T0 - dt.timedelta(days=6)).replace(hour=0), T0.replace(hour=0)

    class Killed(Exception):
        pass

    seen = []

    def dies_after_three(day, rows):
        seen.append(day)
        if len(seen) == 3:
            raise Killed

    with pytest.raises(Killed):
        metrics_rollup_rebuild(start=start, end=end, now=T0, progress=dies_after_three)
    progress = RollupRebuild.objects.get()
    assert progress.finished_at is None and progress.done_through == start + dt.timedelta(days=3)

    resumed = []
    metrics_rollup_rebuild(start=start, end=end, now=T0, progress=lambda day, rows: resumed.append(day))
    assert resumed == [start + dt.timedelta(days=d) for d in range(3, 6)]
    assert RollupRebuild.objects.get().finished_at is not None
    assert _day_sums(Granularity.DAY) == {f"s{d}": 100 for d in range(1, 7)}


@pytest.mark.django_db(transaction=True)
def test_a_parallel_rebuild_writes_what_a_sequential_one_does():
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("parallel rebuilds run on PostgreSQL only (SQLite has one writer)")
    _config(hour_rollup_retention_days=10)
    for days_ago in range(0, 20):
        BatchEventFactory(ts=T0 - dt.timedelta(days=days_ago, minutes=days_ago), stage_template=f"s{days_ago % 4}")
        TokenUsageFactory(ts=T0 - dt.timedelta(days=days_ago), model_version=f"v{days_ago % 3}")
    start = (T0 - dt.timedelta(days=25)).replace(hour=0)
    metrics_rollup_rebuild(start=start, end=T0 + M, now=T0 + M, jobs=1)
    sequential = (_rows(), _rows(MetricsStatusSummary))
    MetricsSummary.objects.all().delete()
    MetricsStatusSummary.objects.all().delete()
    metrics_rollup_rebuild(start=start, end=T0 + 2 * M, now=T0 + M, jobs=3)
    assert (_rows(), _rows(MetricsStatusSummary)) == sequential


def test_a_pass_reports_the_summary_rows_it_wrote_and_rewrites_only_its_window():
    # docs/metrics.md: a pass recomputes the trailing window [watermark - 2 min, now] (and the minutes of
    # late events), and every coarser bucket touching it; each bucket is one summary row per key.
    for offset in (dt.timedelta(minutes=5), dt.timedelta(hours=1), dt.timedelta(hours=1, minutes=30)):
        BatchEventFactory(ts=T0 + offset)  # 12:05, 13:00 and 13:30, one key
    first = metrics_rollup(now=T0 + dt.timedelta(hours=1, minutes=31))
    # 3 minutes, 2 hours, 1 day, 1 week, 1 month: each written once.
    per_granularity = dict(MetricsSummary.objects.order_by().values_list("granularity").annotate(n=Count("id")))
    assert per_granularity == {"minute": 3, "hour": 2, "day": 1, "week": 1, "month": 1}
    assert first.rows == 8
    second = metrics_rollup(now=T0 + dt.timedelta(hours=1, minutes=40))
    # The window is 13:29-13:40: the 13:30 minute, hour 13, and the day, week and month holding them.
    # Not 12:05 or 13:00, nor hour 12 (their buckets lie before the window).
    assert second.start == T0 + dt.timedelta(hours=1, minutes=29)
    assert second.rows == 5
    assert MetricsSummary.objects.count() == 8


def test_a_pass_rewrites_each_coarse_bucket_once_however_many_of_its_ranges_touch_it():
    BatchEventFactory(ts=T0 + 5 * M)
    assert metrics_rollup(now=T0 + 10 * M).rows == 5  # the minute, its hour, day, week and month
    BatchEventFactory(ts=T0 + 5 * M)  # a new id, long before the window: its minute is a range of its own
    second = metrics_rollup(now=T0 + 11 * M)
    assert second.late_minutes == [T0 + 5 * M]
    # The late minute and the window share their hour, day, week and month: each rewritten once.
    assert second.rows == 5
    assert _get(Granularity.HOUR, T0, stage_template="filter").batches == 2


def test_a_pass_rewrites_only_the_token_rows_of_its_window():
    # The same rule for model calls: their summary columns are summed from the per-status rows of the
    # window's buckets only, so a later pass reports (and writes) just the rows of its own window.
    for offset in (dt.timedelta(minutes=5), dt.timedelta(hours=1), dt.timedelta(hours=1, minutes=30)):
        TokenUsageFactory(ts=T0 + offset)
    first = metrics_rollup(now=T0 + dt.timedelta(hours=1, minutes=31))
    assert first.rows == 8
    second = metrics_rollup(now=T0 + dt.timedelta(hours=1, minutes=40))
    assert second.rows == 5
    assert MetricsSummary.objects.count() == 8


def test_a_rebuild_reports_the_summary_rows_it_wrote():
    for offset in (dt.timedelta(minutes=5), dt.timedelta(hours=1), dt.timedelta(hours=1, minutes=30)):
        BatchEventFactory(ts=T0 + offset)
    day = bucket_floor(T0, Granularity.DAY)
    # Past the minute horizon: hours from raw (12, 13), the day from them, then its week and month.
    _config(minute_rollup_retention_days=2, hour_rollup_retention_days=10)
    assert metrics_rollup_rebuild(start=day, end=day + dt.timedelta(days=1), now=T0 + dt.timedelta(days=5)) == 5
    # Past the hour horizon: the day straight from raw, then its week and month.
    MetricsSummary.objects.all().delete()
    assert metrics_rollup_rebuild(start=day, end=day + dt.timedelta(days=1), now=T0 + dt.timedelta(days=40)) == 3
    assert set(MetricsSummary.objects.values_list("granularity", flat=True)) == {"day", "week", "month"}


def test_a_rebuild_of_a_day_leaves_the_next_rolled_up_day_alone():
    # Model calls on two days, both rolled up by a pass; rebuilding the first day recomputes its own
    # buckets only: hours 12 and 13 from raw, the day from them, its week and month (5 rows), not the
    # second day's rows, though their per-status rows are there to be summed.
    for offset in (dt.timedelta(minutes=5), dt.timedelta(hours=1), dt.timedelta(days=1)):
        TokenUsageFactory(ts=T0 + offset)
    metrics_rollup(now=T0 + dt.timedelta(days=1, minutes=5))
    day = bucket_floor(T0, Granularity.DAY)
    _config(minute_rollup_retention_days=2, hour_rollup_retention_days=10)
    assert metrics_rollup_rebuild(start=day, end=day + dt.timedelta(days=1), now=T0 + dt.timedelta(days=5)) == 5


def test_a_rebuild_leaves_earlier_history_alone_when_its_raw_events_were_pruned():
    # docs/metrics.md: raw events are pruned once rolled up, and the rollups of pruned ranges are kept.
    # Rebuilding a later day must not recompute an earlier day's buckets from what raw is left of it.
    day = bucket_floor(T0, Granularity.DAY)
    next_day = day + dt.timedelta(days=1)

    def earlier(model):
        fields = [f.attname for f in model._meta.concrete_fields if f.attname not in ("id", "updated_at")]
        return sorted(model.objects.filter(bucket__lt=next_day).order_by().values_list(*fields))

    TokenUsageFactory(ts=T0)
    pruned = TokenUsageFactory(ts=T0 + dt.timedelta(seconds=10))  # the same minute, hour and day
    TokenUsageFactory(ts=T0 + dt.timedelta(days=1))
    now = T0 + dt.timedelta(days=1, minutes=5)
    metrics_rollup(now=now)
    before = earlier(MetricsStatusSummary), earlier(MetricsSummary)
    assert before[0] and before[1]
    TokenUsage.objects.filter(pk=pruned.pk).delete()
    metrics_rollup_rebuild(start=next_day, end=next_day + dt.timedelta(days=1), now=now)
    assert (earlier(MetricsStatusSummary), earlier(MetricsSummary)) == before


def _utc(*args):
    return dt.datetime(*args, tzinfo=dt.UTC)


# Bucket starts written by hand: weeks start on Monday, days at local midnight of the portal's zone
# (Shanghai is UTC+8 all year), as docs/metrics.md says; 31 March 17:05 UTC is already 1 April there.
BUCKET_STARTS = {
    ("UTC", _utc(2026, 3, 11, 15, 47, 31, 123456)): {
        "minute": _utc(2026, 3, 11, 15, 47),
        "hour": _utc(2026, 3, 11, 15),
        "day": _utc(2026, 3, 11),
        "week": _utc(2026, 3, 9),
        "month": _utc(2026, 3, 1),
    },
    ("Asia/Shanghai", _utc(2026, 3, 11, 15, 47, 31, 123456)): {
        "minute": _utc(2026, 3, 11, 15, 47),
        "hour": _utc(2026, 3, 11, 15),
        "day": _utc(2026, 3, 10, 16),
        "week": _utc(2026, 3, 8, 16),
        "month": _utc(2026, 2, 28, 16),
    },
    ("UTC", _utc(2026, 3, 31, 17, 5, 9, 500000)): {
        "minute": _utc(2026, 3, 31, 17, 5),
        "hour": _utc(2026, 3, 31, 17),
        "day": _utc(2026, 3, 31),
        "week": _utc(2026, 3, 30),
        "month": _utc(2026, 3, 1),
    },
    ("Asia/Shanghai", _utc(2026, 3, 31, 17, 5, 9, 500000)): {
        "minute": _utc(2026, 3, 31, 17, 5),
        "hour": _utc(2026, 3, 31, 17),
        "day": _utc(2026, 3, 31, 16),
        "week": _utc(2026, 3, 29, 16),
        "month": _utc(2026, 3, 31, 16),
    },
}


@pytest.mark.parametrize(("zone", "ts"), list(BUCKET_STARTS), ids=lambda v: str(v))
def test_the_bucket_start_of_each_granularity_in_utc_and_east_of_it(settings, zone, ts):
    settings.TIME_ZONE = zone
    got = {gran: bucket_floor(ts, gran) for gran in Granularity.values}
    assert got == BUCKET_STARTS[(zone, ts)]
    # Given in another zone, the same instant has the same bucket.
    assert bucket_floor(ts.astimezone(dt.timezone(dt.timedelta(hours=-5))), "day") == BUCKET_STARTS[(zone, ts)]["day"]
