"""Fixtures of the metrics tests: a hand-computed history rolled up through the real services."""

import datetime as dt

import pytest
from django.utils import timezone

from metrics import services
from metrics.services import bucket_floor, metrics_rollup, metrics_rollup_rebuild

from .factories import BatchEventFactory, TokenUsageFactory


@pytest.fixture(autouse=True)
def fresh_rollup_statements():
    """Each test compiles the rollup statements it runs, instead of reusing another test's.

    `metrics/services.py` caches its compiled statements per process. Without this, only the
    first test of a session ever calls the statement builders, so a tool that maps code to the
    tests that reach it (mutation testing's coverage pass) credits every builder to that one test,
    and a test that would catch a wrong statement never sees one built.
    """
    services._statements.clear()
    yield
    services._statements.clear()


@pytest.fixture
def today():
    return bucket_floor(timezone.now(), "day")


@pytest.fixture
def history_data(db, today):
    """Project 1 and 2 over three days (D-2, D-1 = 'yesterday', D-3 of last year), all rolled up.

    Day D-1: project 1 filter 3 batches x 100 records (1 failed batch), model v1: 10 OK + 5 UNAVAILABLE;
    day D-2: project 1 filter 1 batch x 100; project 2: 1 batch x 1000 on D-1 (filtered out by project=1);
    the same date a year before D-1: project 1 filter 2 batches x 100.
    """
    d1, d2 = today - dt.timedelta(days=1), today - dt.timedelta(days=2)
    year_ago = d1.replace(year=d1.year - 1)
    at = dt.timedelta(hours=10)
    BatchEventFactory(ts=d1 + at)
    BatchEventFactory(ts=d1 + at)
    BatchEventFactory(ts=d1 + at, failed=True)
    BatchEventFactory(ts=d2 + at)
    BatchEventFactory(ts=d1 + at, project_id=2, pipeline_id=20, records_in=1000, records_out=1000, records_failed=0)
    BatchEventFactory(ts=year_ago + at)
    BatchEventFactory(ts=year_ago + at)
    TokenUsageFactory(ts=d1 + at, requests=10, records=10, prompt_tokens=1000, completion_tokens=500)
    TokenUsageFactory(ts=d1 + at, unavailable=True, requests=5, records=5, latency_ms_sum=5000.0, latency_ms_max=2000.0)
    TokenUsageFactory(ts=d1 + at, model_version="v2", requests=4, records=4, prompt_tokens=400, completion_tokens=40)
    now = timezone.now()
    metrics_rollup_rebuild(start=year_ago, end=year_ago + dt.timedelta(days=1), now=now)
    metrics_rollup_rebuild(start=d2, end=now, now=now)
    metrics_rollup(now=now)
    return {"d1": d1, "d2": d2, "year_ago": year_ago}
