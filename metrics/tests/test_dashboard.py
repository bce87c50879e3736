"""Dashboard page, its refresh endpoint, figures, overview panel and the plotly static file."""

import datetime as dt
import json
import re

import plotly.graph_objects as go
import pytest
from django.contrib.staticfiles import finders
from django.urls import reverse

from metrics.staticfiles import STATIC_PATH

pytestmark = pytest.mark.django_db


def _day(value: dt.datetime) -> str:
    return value.date().isoformat()


def test_it_renders_the_dashboard_with_true_numbers(client, history_data):
    d1 = history_data["d1"]
    params = {"range": "custom", "start": _day(d1), "end": _day(d1), "project": 1, "chart": "bar"}
    response = client.get(reverse("metrics:dashboard"), params)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-kpi="records_processed"' in html and ">300<" in html
    assert "+200.0%" in html  # against the 100 records of the day before
    assert "metrics/vendor/plotly-basic.min.js" in html
    # Every script and style comes from our own static files, never from a CDN. (Not a bare "cdn" substring
    # test: the random CSRF token in the page's forms spells "cdn" about one run in three hundred.)
    for src in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert not src.startswith(("http:", "https:", "//")), src
    assert not re.search(r"\bcdn[.\-/]", html, re.IGNORECASE)
    figures = json.loads(json.dumps(response.context["payload"]["figures"]))
    assert set(figures) == {"stages", "tokens", "throughput", "history", "requests", "gateway"}
    assert figures["history"]["data"][0]["type"] == "bar"
    pie = figures["requests"]["data"][0]
    assert (pie["labels"], pie["values"]) == (["OK", "UNAVAILABLE"], [14, 5])
    for name in ("stages", "tokens", "history", "request-structure"):
        assert reverse(f"metrics-api:{name}-csv") + "?" in html
    assert "project=1" in response.context["csv_links"]["stages"]


def test_its_figures_are_valid_plotly(client, history_data):
    body = client.get(reverse("metrics:dashboard-data"), {"range": "7d"}).json()
    for fig in body["figures"].values():
        go.Figure(fig)  # raises on any invalid property
    assert {card["key"] for card in body["kpis"]} >= {"records_processed", "tokens", "p95_latency_ms"}
    assert "data_as_of" in body and body["lagging"] is False


def test_it_shows_filter_errors_instead_of_failing(client):
    response = client.get(reverse("metrics:dashboard"), {"range": "custom", "start": "not-a-date", "chart": "pie"})
    assert response.status_code == 200
    assert set(response.context["errors"]) == {"start", "chart"}
    data = client.get(reverse("metrics:dashboard-data"), {"start": "nope"})
    assert data.status_code == 400 and "start" in data.json()["error"]["fields"]


def test_it_says_when_rollups_lag(client, db):
    html = client.get(reverse("metrics:dashboard")).content.decode()
    assert "No rollup has run yet" in html


def test_it_requires_a_role_in_local_auth(client, local_auth, outsider_user, viewer_user):
    assert client.get(reverse("metrics:dashboard")).status_code == 302
    client.force_login(outsider_user)
    assert client.get(reverse("metrics:dashboard")).status_code == 403
    client.force_login(viewer_user)
    assert client.get(reverse("metrics:dashboard")).status_code == 200


def test_the_overview_shows_todays_kpis(client, admin_user):
    client.force_login(admin_user)
    html = client.get(reverse("admin:index")).content.decode()
    assert 'id="df-today-kpis"' in html and 'data-kpi="records_processed"' in html


def test_plotly_js_is_served_from_our_static_files(client):
    path = finders.find(STATIC_PATH)
    assert path and path.endswith("static/metrics/vendor/plotly-basic.min.js")
    response = client.get("/static/" + STATIC_PATH)
    assert response.status_code == 200


def test_stages_are_named_by_their_kind_in_the_reader_language(client, history_data):
    # The rollups keep the kind's code ("filter"); people read its label ("过滤" in Chinese).
    client.cookies["django_language"] = "zh-hans"
    html = client.get(reverse("metrics:dashboard"), {"range": "7d"}).content.decode()
    assert '<th scope="row">过滤</th>' in html
    body = client.get(reverse("metrics:dashboard-data"), {"range": "7d"}).json()
    assert [row["stage_label"] for row in body["stages"]] == ["过滤", "模型推理"]
    assert body["figures"]["stages"]["data"][0]["x"] == ["过滤", "模型推理"]
