"""Factories for raw metric events (seeded, so fixtures are stable)."""

import datetime as dt

import factory
import factory.random
from django.utils import timezone

from metrics.models import (
    BatchEvent,
    MetricsSlice,
    MetricsStatusSlice,
    MetricsStatusSummary,
    MetricsSummary,
    RollupRebuild,
    RollupWatermark,
    TokenUsage,
)
from metrics.services import latency_histogram

factory.random.reseed_random("dataflare-metrics")
T0 = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)


class BatchEventFactory(factory.django.DjangoModelFactory):
    """A finished batch attempt of project 1, pipeline 10, stage 'filter'."""

    class Meta:
        model = BatchEvent

    ts = T0
    project_id = 1
    pipeline_id = 10
    stage_template = "filter"
    model_version = ""
    records_in = 100
    records_out = 90
    records_filtered = 8
    records_failed = 2
    duration_ms = 500.0
    succeeded = True

    class Params:
        failed = factory.Trait(succeeded=False, records_out=0, records_filtered=0, records_failed=100)


class TokenUsageFactory(factory.django.DjangoModelFactory):
    """A group of model calls of project 1, pipeline 10, stage 'model_inference', model v1."""

    class Meta:
        model = TokenUsage
        skip_postgeneration_save = True

    ts = T0
    project_id = 1
    pipeline_id = 10
    stage_template = "model_inference"
    model_name = "sentiment"
    model_version = "v1"
    status_code = "OK"
    requests = 10
    records = 10
    prompt_tokens = 1000
    completion_tokens = 200
    latency_ms_sum = 400.0
    latency_ms_max = 80.0

    class Params:
        unavailable = factory.Trait(status_code="UNAVAILABLE", prompt_tokens=0, completion_tokens=0)

    @factory.post_generation
    def histogram(obj, create, extracted, **kwargs):
        hist = latency_histogram(samples=extracted, requests=obj.requests, latency_ms_sum=obj.latency_ms_sum)
        if any(getattr(obj, k) for k in hist):
            return
        for key, value in hist.items():
            setattr(obj, key, value)
        if create:
            obj.save(update_fields=list(hist))


class RollupRowFactory(factory.django.DjangoModelFactory):
    """The key every rollup row has: this minute's bucket of project 1."""

    class Meta:
        abstract = True

    granularity = "minute"
    bucket = factory.LazyFunction(lambda: timezone.now().replace(second=0, microsecond=0))
    project_id = 1
    updated_at = factory.LazyFunction(timezone.now)


class MetricsSummaryFactory(RollupRowFactory):
    """A minute rollup bucket with plausible sums."""

    class Meta:
        model = MetricsSummary

    records_in = 1000
    records_out = 950
    batches = 10


class MetricsStatusSummaryFactory(RollupRowFactory):
    class Meta:
        model = MetricsStatusSummary

    status_code = "OK"


class MetricsSliceFactory(RollupRowFactory):
    """A project's total row of a bucket (dimension "total"); a per-dimension row sets its one column."""

    class Meta:
        model = MetricsSlice

    dimension = "total"


class MetricsStatusSliceFactory(RollupRowFactory):
    class Meta:
        model = MetricsStatusSlice

    status_code = "OK"


class RollupWatermarkFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = RollupWatermark
        django_get_or_create = ("granularity",)

    granularity = "minute"
    rolled_until = factory.LazyFunction(timezone.now)


class RollupRebuildFactory(factory.django.DjangoModelFactory):
    """A rebuild of one day, half done."""

    class Meta:
        model = RollupRebuild

    start = T0 - dt.timedelta(days=1)
    end = T0
    now = T0
    done_through = T0 - dt.timedelta(hours=12)
