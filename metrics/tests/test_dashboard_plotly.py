"""The dashboard's plotly: a partial bundle in step with plotly.py, zh-CN locale, no Share button,
periods still in progress compared like for like (or flagged), CSV downloads audited."""

import datetime as dt
import json
from pathlib import Path

import pytest
from django.conf import settings
from django.urls import reverse

from dataflare_portal.core.models import AuditLogEntry
from metrics import charts, selectors
from metrics.filtersets import metrics_query
from metrics.services import metrics_rollup_rebuild
from metrics.staticfiles import BUNDLE_TRACES, PACKAGE_BUNDLE, STATIC_PATH, bundle_version, check_plotly_bundle

from .factories import BatchEventFactory

pytestmark = pytest.mark.django_db


def test_the_bundle_is_the_partial_build_of_the_plotly_js_plotly_py_targets():
    ours = Path(settings.BASE_DIR) / "static" / STATIC_PATH
    assert bundle_version(ours) == bundle_version(PACKAGE_BUNDLE) is not None
    assert ours.stat().st_size < PACKAGE_BUNDLE.stat().st_size / 3
    assert check_plotly_bundle() == []


def test_every_chart_uses_only_traces_the_bundle_has(client, history_data):
    body = client.get(reverse("metrics:dashboard-data"), {"range": "7d"}).json()
    used = {trace["type"] for fig in body["figures"].values() for trace in fig["data"]}
    assert used and used <= BUNDLE_TRACES
    assert {t["type"] for t in charts.history_chart([], kind="bar")["data"]} <= BUNDLE_TRACES


@pytest.mark.parametrize(("language", "locale"), [("en", None), ("zh-hans", "zh-CN")])
def test_the_page_loads_the_bundle_the_locale_and_no_share_button(client, language, locale):
    client.post("/i18n/setlang/", {"language": language, "next": "/"})
    response = client.get(reverse("metrics:dashboard"))
    html = response.content.decode()
    assert "metrics/vendor/plotly-basic.min.js" in html and "plotly.min.js" not in html
    assert ("metrics/vendor/plotly-locale-zh-cn.js" in html) == (locale is not None)
    for config in response.context["plot_configs"].values():
        assert config.get("locale") == locale
        assert config["showSendToCloud"] is False and config["plotlyServerURL"] == ""
        assert "sendChartToCloud" in config["modeBarButtonsToRemove"]
    assert client.get("/static/metrics/vendor/plotly-locale-zh-cn.js").status_code == 200


def test_a_day_in_progress_is_compared_with_the_same_hours_of_the_day_before(today):
    now = today + dt.timedelta(hours=12)
    yesterday = today - dt.timedelta(days=1)
    BatchEventFactory(ts=yesterday + dt.timedelta(hours=6))
    BatchEventFactory(ts=yesterday + dt.timedelta(hours=18))
    BatchEventFactory(ts=today + dt.timedelta(hours=6))
    metrics_rollup_rebuild(start=yesterday - dt.timedelta(days=1), end=now, now=now)
    day = today.date().isoformat()
    query = metrics_query({"range": "custom", "start": day, "end": day, "project": 1}, now=now)
    assert query.end > now  # the window is the whole of today, which is half over
    kpi = selectors.kpis(query)["records_processed"]
    # 100 records by noon today against 100 by noon yesterday: flat, not -50 % against the whole day.
    assert (kpi["value"], kpi["previous"], kpi["delta_pct"], kpi["partial"]) == (100, 100, 0.0, True)
    done = yesterday.date().isoformat()
    past = metrics_query({"range": "custom", "start": done, "end": done, "project": 1}, now=now)
    assert selectors.kpis(past)["records_processed"]["partial"] is False


def test_the_period_in_progress_is_flagged_not_compared(today):
    now = today + dt.timedelta(hours=12)
    BatchEventFactory(ts=today - dt.timedelta(days=7) + dt.timedelta(hours=6))
    BatchEventFactory(ts=today + dt.timedelta(hours=6))
    metrics_rollup_rebuild(start=today - dt.timedelta(days=9), end=now, now=now)
    rows = selectors.history(metrics_query({"range": "today"}, now=now), period="day", periods=3)
    assert [r["partial"] for r in rows] == [False, False, True]
    assert rows[-1]["value"] == 100 and rows[-1]["pop_pct"] is None and rows[-1]["yoy_pct"] is None
    fig = charts.history_chart(rows)
    assert fig["data"][0]["marker"]["opacity"][-1] < 1
    assert fig["layout"]["annotations"][0]["text"] == "in progress"


def test_csv_downloads_are_audited(client, history_data):
    before = AuditLogEntry.objects.filter(action="export").count()
    url = reverse("metrics-api:stages-csv") + "?range=7d&project=1"
    response = client.get(url)
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    response.getvalue()
    entry = AuditLogEntry.objects.filter(action="export").latest("pk")
    assert AuditLogEntry.objects.filter(action="export").count() == before + 1
    assert entry.object_type == "metrics.csv" and entry.object_id == "stages"
    assert entry.after["filters"] == {"range": "7d", "project": "1"} and entry.after["rows"] >= 1
    json.dumps(entry.after)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("synchronous", [False, True])
def test_a_csv_download_commits_its_audit_entry_without_the_wal_flush_unless_configured(client, settings, synchronous):
    """On PostgreSQL the download's audit entry is committed before the answer, with `synchronous_commit = off`
    for that transaction only (EXPORT_AUDIT_SYNCHRONOUS_COMMIT=true restores the flush)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    settings.EXPORT_AUDIT_SYNCHRONOUS_COMMIT = synchronous
    with CaptureQueriesContext(connection) as captured:
        response = client.get(reverse("metrics-api:kpis-csv") + "?range=7d")
        response.getvalue()
    statements = [q["sql"] for q in captured.captured_queries]
    assert response.status_code == 200
    relaxed = [s for s in statements if "synchronous_commit" in s]
    expect_relaxed = connection.vendor == "postgresql" and not synchronous
    assert relaxed == (["SET LOCAL synchronous_commit = off"] if expect_relaxed else [])
    if expect_relaxed:  # set inside the transaction that inserts the entry, right before it
        at = statements.index("SET LOCAL synchronous_commit = off")
        assert statements[at + 1].startswith('INSERT INTO "audit_log"')
        with connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            assert cursor.fetchone()[0] == "on"  # SET LOCAL ended with that transaction
    assert AuditLogEntry.objects.filter(action="export", object_id="kpis").count() == 1
