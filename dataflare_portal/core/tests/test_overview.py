"""The portal shell: operations overview panels, alert banner, nav bar and language switcher."""

import re

import pytest

from dataflare_portal.core import registry


@pytest.fixture
def no_panels(monkeypatch):
    """The overview with only the panels a test registers (apps register theirs at start-up)."""
    monkeypatch.setattr(registry, "overview_panels", [])
    monkeypatch.setattr(registry, "banner_providers", [])
    return registry


@pytest.mark.django_db
def test_the_overview_shows_getting_started_when_no_panel_is_registered(client, no_panels):
    page = client.get("/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Getting started" in html and "seed_demo" in html
    assert "/dashboard/" in html


@pytest.mark.django_db
def test_the_overview_renders_registered_panels_in_order(client, no_panels):
    def runs(request):
        return {
            "template": "portal/_panel.html",
            "context": {"title": "Active runs", "columns": ["Run"], "rows": [["web #1"]], "more_url": "/runs/"},
        }

    def kpis(request):
        return {"template": "portal/_panel.html", "context": {"title": "Today", "rows": [], "empty": "No runs yet."}}

    registry.register_overview_panel(20, runs)
    registry.register_overview_panel(10, kpis)
    registry.register_overview_panel(10, kpis)  # registering twice keeps one
    html = client.get("/").content.decode()
    assert "Getting started" not in html
    assert html.count("No runs yet.") == 1
    assert html.index("Today") < html.index("Active runs")
    assert "web #1" in html and 'href="/runs/"' in html
    # The model list stays below the panels.
    assert html.index("Active runs") < html.index('id="content-main"')


@pytest.mark.django_db
def test_a_failing_panel_shows_an_error_box_not_a_500(client, no_panels):
    def broken(request):
        raise RuntimeError("query failed")

    def fine(request):
        return {"template": "portal/_panel.html", "context": {"title": "Still here", "rows": [["x"]]}}

    registry.register_overview_panel(1, broken)
    registry.register_overview_panel(2, fine)
    response = client.get("/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "Panel unavailable" in html and "broken" in html and "Still here" in html


@pytest.mark.django_db
def test_a_panel_with_nothing_to_show_is_skipped(client, no_panels):
    registry.register_overview_panel(1, lambda request: None)
    html = client.get("/").content.decode()
    assert "Getting started" in html and "Panel unavailable" not in html


@pytest.mark.django_db
def test_the_banner_lists_critical_alerts_before_warnings(client, no_panels):
    def provider(request):
        return [
            {"level": "warning", "title": "Latency p95 above 800 ms", "url": "/alerts/1/"},
            {"level": "critical", "title": "Token budget exceeded", "url": "/alerts/2/"},
        ]

    registry.register_banner_provider(provider)
    html = client.get("/").content.decode()
    banner = re.search(r'<div class="df-banner" role="alert".*?</div>', html, re.S)
    assert banner, "the banner needs role=alert"
    text = banner.group(0)
    assert text.index("Token budget exceeded") < text.index("Latency p95 above 800 ms")
    assert 'href="/alerts/2/"' in text and "df-badge-bad" in text and "df-badge-warn" in text


@pytest.mark.django_db
def test_the_banner_is_hidden_from_anonymous_visitors(client, no_panels, local_auth):
    registry.register_banner_provider(lambda request: [{"level": "critical", "title": "Secret incident", "url": ""}])
    login = client.get("/login/")
    assert login.status_code == 200
    assert b"Secret incident" not in login.content


@pytest.mark.django_db
def test_every_page_has_the_portal_nav_and_language_switcher(client, no_panels):
    html = client.get("/core/auditlogentry/").content.decode()
    nav = re.search(r'<nav class="df-nav".*?</nav>', html, re.S).group(0)
    for label, href in [
        ("Overview", "/"),
        ("Dashboard", "/dashboard/"),
        ("Workers", "/workers/"),
        ("Alerts inbox", "/alerts/"),
        ("API", "/api/v1/"),
        ("API docs", "/api/docs/"),
    ]:
        assert f">{label}</a>" in nav, label
        assert f'href="{href}"' in nav, href
    assert ">Runs</a>" in nav and ">Review queue</a>" in nav
    assert 'action="/i18n/setlang/"' in html and 'value="zh-hans"' in html
    assert "portal/portal.css" in html


@pytest.mark.django_db
def test_the_language_switcher_sets_the_language(client, no_panels):
    response = client.post("/i18n/setlang/", {"language": "zh-hans", "next": "/"})
    assert response.status_code == 302
    html = client.get("/").content.decode()
    assert '<html lang="zh-hans"' in html
    assert '<option value="zh-hans" selected' in html
