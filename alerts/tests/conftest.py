"""Fixtures of the alerts tests."""

import datetime as dt

import pytest
from django.core.cache import cache

from alerts.models import AlertRule
from alerts.services import BANNER_CACHE_KEY

from .factories import EmailChannelFactory, PipelineFactory

# A fixed "now" for rollup-driven rules: buckets are placed relative to it.
NOW = dt.datetime(2026, 11, 18, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def keep_defaults():
    """Request this to keep the default rules the data migration ships."""


@pytest.fixture(autouse=True)
def _fresh_banner_and_no_defaults(request, db):
    """Each test starts with no cached banner (Redis outlives a test) and without the shipped default rules."""
    cache.delete(BANNER_CACHE_KEY)
    if "keep_defaults" not in request.fixturenames:
        AlertRule.objects.all().delete()
    yield
    cache.delete(BANNER_CACHE_KEY)


@pytest.fixture
def now():
    return NOW


@pytest.fixture
def pipeline(db):
    return PipelineFactory()


@pytest.fixture
def channel(db):
    return EmailChannelFactory()
