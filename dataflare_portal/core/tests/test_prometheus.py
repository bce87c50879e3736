"""Prometheus /metrics: requests by status, runs and batches by state, model calls, rollup lag; access control."""

import datetime

import pytest
from django.apps import apps
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families


def _samples(response) -> dict:
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@pytest.mark.django_db
def test_it_reports_requests_runs_batches_model_calls_and_lag(client):
    client.get("/healthz")
    client.get("/api/v1/no-such-endpoint/")
    Summary = apps.get_model("metrics", "MetricsStatusSummary")
    Watermark = apps.get_model("metrics", "RollupWatermark")
    now = timezone.now()
    for minutes, (status, n) in enumerate((("OK", 90), ("UNAVAILABLE", 7), ("OK", 3)), start=1):
        Summary.objects.create(
            granularity="minute",
            bucket=now - datetime.timedelta(minutes=minutes),
            project_id=1,
            status_code=status,
            requests=n,
            updated_at=now,
        )
    Summary.objects.create(  # older than an hour: not counted
        granularity="minute",
        bucket=now - datetime.timedelta(hours=2),
        project_id=1,
        status_code="OK",
        requests=1000,
        updated_at=now,
    )
    Watermark.objects.create(granularity="minute", rolled_until=now - datetime.timedelta(seconds=120))

    samples = _samples(client.get("/metrics"))
    assert samples[("dataflare_http_requests_total", (("area", "page"), ("method", "GET"), ("status", "200")))] >= 1
    assert samples[("dataflare_http_requests_total", (("area", "api"), ("method", "GET"), ("status", "404")))] >= 1
    assert samples[("dataflare_model_calls_last_hour", (("outcome", "OK"),))] == 93
    assert samples[("dataflare_model_calls_last_hour", (("outcome", "UNAVAILABLE"),))] == 7
    assert 119 <= samples[("dataflare_rollup_lag_seconds", ())] < 3600
    for state in ("pending", "queued", "running", "waiting"):
        assert samples[("dataflare_batches", (("state", state),))] == 0


@pytest.mark.django_db
def test_it_reports_no_rollup_lag_before_the_first_rollup(client):
    """The watermark rows start at datetime.min; that used to read as a lag of about 2,026 years."""
    Watermark = apps.get_model("metrics", "RollupWatermark")
    never = datetime.datetime.min.replace(tzinfo=datetime.UTC)
    for gran in ("minute", "hour", "day"):
        Watermark.objects.create(granularity=gran, rolled_until=never)
    samples = _samples(client.get("/metrics"))
    assert ("dataflare_rollup_lag_seconds", ()) not in samples
    now = timezone.now()
    Watermark.objects.filter(granularity="minute").update(rolled_until=now - datetime.timedelta(seconds=30))
    lag = _samples(client.get("/metrics"))[("dataflare_rollup_lag_seconds", ())]
    assert 29 <= lag < 3600


@pytest.mark.django_db
def test_it_counts_runs_by_state(client):
    from django.db import connection

    TaskRun = apps.get_model("tasks", "TaskRun")
    table = TaskRun._meta.db_table
    # Rows are made by the engine's services; counting needs only the status column, so copy
    # whatever runs exist and otherwise check the family is present and empty.
    samples = _samples(client.get("/metrics"))
    runs = {labels: v for (name, labels), v in samples.items() if name == "dataflare_runs"}
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT status, COUNT(*) FROM {table} GROUP BY status")  # noqa: S608
        expected = {(("state", s),): n for s, n in cursor.fetchall()}
    assert runs == expected


def test_it_can_require_a_bearer_token(client, db, settings):
    settings.METRICS_TOKEN = "scrape-me"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-me").status_code == 200


def test_it_can_be_disabled(client, db, settings):
    settings.METRICS_ENABLED = False
    assert client.get("/metrics").status_code == 404


def test_it_reports_queue_depth_on_a_redis_broker(client, db, settings):
    from conftest import redis_url

    url = redis_url()
    if not url:
        pytest.skip("no Redis in this run")
    import redis

    settings.CELERY_BROKER_URL = url
    r = redis.Redis.from_url(url)
    r.delete("default")
    r.rpush("default", "a", "b", "c")
    try:
        samples = _samples(client.get("/metrics"))
    finally:
        r.delete("default")
    assert samples[("dataflare_queue_depth", (("queue", "default"),))] == 3
