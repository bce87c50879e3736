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


@pytest.mark.parametrize("period", ["day", "week", "month"])
def test_windows_sharing_a_history_key_share_the_history_answer(history_data, period):
    """The dashboard memoises the history on `history_key` (not the window): every window with the same key
    must have the same answer, and the windows that differ in what the answer depends on get another key."""
    from metrics import selectors
    from metrics.filtersets import metrics_query

    today = history_data["d1"] + dt.timedelta(days=1)
    answers: dict[tuple, list] = {}
    keys_per_filter: dict[str, set] = {}
    for filters in ({}, {"project": "1"}, {"project": "2"}, {"model_version": "v2"}):
        for days_back in range(0, 70, 3):
            for length in (1, 6, 30):
                end = today - dt.timedelta(days=days_back) + dt.timedelta(hours=days_back % 24)
                start = end - dt.timedelta(days=length)
                query = metrics_query(
                    {"range": "custom", "start": start.isoformat(), "end": end.isoformat(), **filters}
                )
                key = selectors.history_key(query, period=period, metric="records_processed")
                answer = selectors.history(query, period=period, metric="records_processed")
                assert answers.setdefault(key, answer) == answer, (key, start, end)
                keys_per_filter.setdefault(repr(filters), set()).add(key)
    # Keys are shared (the memo helps) yet tell the filters apart (the memo is not wrong).
    assert len(answers) < sum(len(k) for k in keys_per_filter.values()) * 3
    assert len(set.union(*keys_per_filter.values())) == sum(len(k) for k in keys_per_filter.values())
    values = {repr(f): [r["value"] for r in answers[max(k)]] for f, k in keys_per_filter.items()}
    assert len({json.dumps(v) for v in values.values()}) > 1  # the filters do change the answer


def test_a_new_window_reuses_the_memoised_history_and_live_line(client, history_data, monkeypatch):
    """On a cold cache a dashboard refresh for a new window in the same month computes neither the history nor
    the live line again (they do not depend on the window's exact bounds)."""
    from metrics import selectors

    calls = []
    for name in ("history", "live_throughput", "kpis"):
        real = getattr(selectors, name)
        monkeypatch.setattr(
            selectors, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k)
        )
    d1 = history_data["d1"]
    url = reverse("metrics:dashboard-data")
    first = client.get(url, {"range": "custom", "start": (d1 - dt.timedelta(days=3)).isoformat(), "period": "month"})
    assert first.status_code == 200 and sorted(calls) == ["history", "kpis", "live_throughput"]
    calls.clear()
    again = client.get(url, {"range": "custom", "start": (d1 - dt.timedelta(days=2)).isoformat(), "period": "month"})
    assert again.status_code == 200
    assert calls == ["kpis"]  # a new window: its KPIs are computed, the history and the live line are reused
    assert again.json()["figures"]["history"] == first.json()["figures"]["history"]
    assert again.json()["kpis"] != first.json()["kpis"]
