"""history_default_window: the time range the statistics dashboard opens with; dashboard_refresh_seconds:
how often it refreshes; raw_retention_days and minute_rollup_retention_days: what a prune pass keeps
(hour_rollup_retention_days: test_rollup.py, test_it_compacts_hours_past_the_hour_horizon_into_their_days)."""

import datetime as dt

import pytest
from django.urls import reverse

from dataflare_portal.core.config import config_set
from metrics.choices import Granularity
from metrics.models import BatchEvent, MetricsSummary
from metrics.services import metrics_prune, metrics_rollup

from .factories import T0, BatchEventFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("window", ["today", "7d", "30d"])
def test_the_dashboard_opens_with_the_default_range(client, admin_user, window):
    config_set(key="history_default_window", value=window, actor=admin_user)
    page = client.get(reverse("metrics:dashboard"))
    assert page.status_code == 200 and page.context["query"].range == window
    assert page.context["form_values"]["range"] == window
    data = client.get(reverse("metrics:dashboard-data")).json()
    assert data["window"]["range"] == window
    # An explicit range in the URL still wins.
    assert client.get(reverse("metrics:dashboard"), {"range": "7d"}).context["query"].range == "7d"


@pytest.mark.parametrize("seconds", [15, 120])
def test_the_dashboard_refreshes_at_the_setting(client, admin_user, seconds):
    config_set(key="dashboard_refresh_seconds", value=seconds, actor=admin_user)
    html = client.get(reverse("metrics:dashboard")).content.decode()
    # static/metrics/dashboard.js reads the interval from this attribute.
    assert f'data-refresh-seconds="{seconds}"' in html
    # A refresh in the URL still wins.
    assert 'data-refresh-seconds="7"' in client.get(reverse("metrics:dashboard"), {"refresh": "7"}).content.decode()


@pytest.mark.parametrize(("days", "kept"), [(3, False), (10, True)])
def test_a_prune_keeps_raw_events_for_the_raw_retention(admin_user, days, kept):
    config_set(key="raw_retention_days", value=days, actor=admin_user)
    event = BatchEventFactory(ts=T0 - dt.timedelta(days=5))
    metrics_rollup(now=T0)
    metrics_prune(now=T0)
    assert BatchEvent.objects.filter(pk=event.pk).exists() is kept


@pytest.mark.parametrize(("days", "kept"), [(3, False), (10, True)])
def test_a_prune_keeps_minute_rollups_for_the_minute_retention(admin_user, days, kept):
    config_set(key="minute_rollup_retention_days", value=days, actor=admin_user)
    BatchEventFactory(ts=T0 - dt.timedelta(days=5))
    # Rolled up while it was recent (minute rows are made only within the horizon), then five days on.
    metrics_rollup(now=T0 - dt.timedelta(days=4))
    minutes = MetricsSummary.objects.filter(granularity=Granularity.MINUTE)
    assert minutes.exists()
    metrics_rollup(now=T0)
    metrics_prune(now=T0)
    assert minutes.exists() is kept
