"""The banner on real rendered pages, the inbox (filters, acknowledge, resolve) and the overview panel."""

import subprocess

import pytest
from django.core.cache import cache
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from alerts.models import Alert
from alerts.services import BANNER_CACHE_KEY
from conftest import chromium_path
from dataflare_portal.core.models import AuditLogEntry

from .factories import RuleFactory


def make_alert(severity="critical", status="firing", title=None, **kw):
    rule = RuleFactory(kind="failure_rate")
    now = timezone.now()
    return Alert.objects.create(
        rule=rule,
        severity=severity,
        status=status,
        title=title or f"{severity} alert on ingest",
        fired_at=now,
        last_evaluated_at=now,
        evidence={"links": {"dashboard": "/dashboard/?pipeline=3"}, "window": {"minutes": 15}},
        **kw,
    )


def banner_of(html: str) -> str:
    start = html.find('class="df-banner"')
    return html[start : html.find("</div>", start)] if start >= 0 else ""


def table_of(html: str) -> str:
    start = html.find('id="df-alert-table"')
    return html[start : html.find("</table>", start)]


def portal_pages():
    """Admin pages, the inbox, and the dashboard and a run page when those apps have installed them."""
    from .factories import TaskRunFactory

    pages = ["/", "/alerts/", reverse("admin:alerts_alertrule_changelist"), reverse("admin:catalog_project_changelist")]
    for name, args in (("metrics:dashboard", []), ("tasks:run-detail", [TaskRunFactory().pk])):
        try:
            pages.append(reverse(name, args=args))
        except NoReverseMatch:
            pass  # not installed yet: the other pages carry the banner
    return pages


def test_the_banner_shows_firing_critical_alerts_on_every_page(client, db):
    for page in portal_pages():
        assert banner_of(client.get(page).content.decode()) == "", page
    alert = make_alert(title="Failure rate 40% on pipeline news")
    cache.delete(BANNER_CACHE_KEY)
    for page in portal_pages():
        response = client.get(page)
        assert response.status_code == 200, page
        banner = banner_of(response.content.decode())
        assert "df-banner-critical" in banner and "Failure rate 40% on pipeline news" in banner, page
        assert reverse("alerts:detail", args=[alert.pk]) in banner


def test_critical_comes_before_the_warning_count_and_acknowledged_alerts_leave(client, admin_user, db):
    from alerts import services

    make_alert("warning", title="w1")
    make_alert("warning", title="w2")
    critical = make_alert("critical", title="the critical one")
    make_alert("critical", status="resolved", title="old news")
    banner = banner_of(client.get("/").content.decode())
    assert banner.index("the critical one") < banner.index("2 warning alerts are firing")
    assert "old news" not in banner and "w1" not in banner
    services.alert_acknowledge(alert=critical, actor=admin_user, note="on it")
    banner = banner_of(client.get("/").content.decode())
    assert "the critical one" not in banner and "2 warning alerts" in banner


def test_the_banner_is_one_small_query_then_cached(client, db, django_assert_max_num_queries):
    from alerts.ui import banner_items

    make_alert()

    class Req:
        user = type("U", (), {"is_authenticated": True})()

    cache.delete(BANNER_CACHE_KEY)
    with django_assert_max_num_queries(2):
        assert [i["level"] for i in banner_items(Req())] == ["critical"]
    with django_assert_max_num_queries(0):
        banner_items(Req())


def test_the_overview_shows_counts_by_severity(client, db):
    make_alert("critical")
    make_alert("warning")
    make_alert("warning", status="acknowledged")
    html = client.get("/").content.decode()
    panel = html[html.find('id="df-panel-alerts"') :]
    assert 'df-alert-count-critical" href="/alerts/?open=true&amp;severity=critical"><strong>1</strong>' in panel
    assert "<strong>2</strong>" in panel


def test_the_inbox_filters_by_status_severity_project_and_kind(client, db):
    from .factories import ProjectFactory

    project = ProjectFactory()
    crit = make_alert("critical", title="crit-in-project", project=project)
    make_alert("warning", title="warn-elsewhere")
    make_alert("critical", status="resolved", title="resolved-one")
    html = table_of(client.get("/alerts/").content.decode())
    assert "crit-in-project" in html and "warn-elsewhere" in html and "resolved-one" not in html
    assert html.index("crit-in-project") < html.index("warn-elsewhere")
    html = table_of(client.get("/alerts/?severity=warning").content.decode())
    assert "warn-elsewhere" in html and "crit-in-project" not in html
    html = table_of(client.get(f"/alerts/?project={project.pk}").content.decode())
    assert "crit-in-project" in html and "warn-elsewhere" not in html
    html = table_of(client.get("/alerts/?status=resolved").content.decode())
    assert "resolved-one" in html and "crit-in-project" not in html
    html = table_of(client.get("/alerts/?kind=run_failed").content.decode())
    assert "crit-in-project" not in html
    html = client.get(f"/alerts/{crit.pk}/").content.decode()
    assert "/dashboard/?pipeline=3" in html and "crit-in-project" in html


def test_acknowledge_with_a_note_then_resolve_from_the_inbox(client, db):
    alert = make_alert()
    response = client.post(f"/alerts/{alert.pk}/acknowledge/", {"note": "rolling back v7", "next": "/alerts/"})
    assert response.status_code == 302 and response["Location"] == "/alerts/"
    alert.refresh_from_db()
    assert alert.status == "acknowledged" and alert.ack_note == "rolling back v7"
    assert alert.acknowledged_by.username == "operator"
    assert AuditLogEntry.objects.filter(
        action="acknowledge", object_id=str(alert.pk), message="rolling back v7"
    ).exists()
    client.post(f"/alerts/{alert.pk}/resolve/", {"note": "fixed"})
    alert.refresh_from_db()
    assert alert.status == "resolved" and alert.resolve_note == "fixed"
    # Acting on a resolved alert is refused with a message, not an error page.
    response = client.post(f"/alerts/{alert.pk}/resolve/", {"note": "again"}, follow=True)
    assert response.status_code == 200 and "already resolved" in response.content.decode()
    assert client.post("/alerts/?next=https://evil.example/", {}).status_code == 405


def test_roles_viewers_read_operators_act(client, local_auth, viewer_user, operator_user, db):
    alert = make_alert()
    assert client.get("/alerts/").status_code == 302  # anonymous: to the login page
    client.force_login(viewer_user)
    assert client.get("/alerts/").status_code == 200
    assert "/acknowledge/" not in client.get("/alerts/").content.decode()
    assert client.post(f"/alerts/{alert.pk}/acknowledge/", {"note": "x"}).status_code == 403
    client.force_login(operator_user)
    assert client.post(f"/alerts/{alert.pk}/acknowledge/", {"note": "x"}).status_code == 302
    alert.refresh_from_db()
    assert alert.status == "acknowledged"


def test_lifting_a_pause_from_the_inbox(client, db):
    from .factories import PipelineFactory

    p = PipelineFactory(runs_paused=True, paused_reason="Token budget exceeded")
    assert "Token budget exceeded" in client.get("/alerts/").content.decode()
    client.post("/alerts/lift-pause/", {"pipeline": p.pk, "note": "approved by finance"})
    p.refresh_from_db()
    assert not p.runs_paused
    assert AuditLogEntry.objects.get(action="unpause").message == "approved by finance"


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(chromium_path() is None, reason="headless Chromium is not installed")
def test_the_banner_renders_in_a_real_browser(live_server, tmp_path):
    make_alert(title="Breaker open on scorer-v2")
    cache.delete(BANNER_CACHE_KEY)
    for page in portal_pages():
        dom = subprocess.run(
            [
                chromium_path(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                f"--user-data-dir={tmp_path / 'profile'}",
                "--dump-dom",
                live_server.url + page,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        banner = banner_of(dom)
        assert "df-banner-critical" in banner and "Breaker open on scorer-v2" in banner, page


def test_the_inbox_costs_the_same_queries_for_5_or_40_alerts(client, db):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def queries():
        cache.delete(BANNER_CACHE_KEY)
        with CaptureQueriesContext(connection) as ctx:
            assert client.get("/alerts/").status_code == 200
        return len(ctx)

    for _ in range(5):
        make_alert()
    client.get("/alerts/")  # warm-up: the first request creates the built-in operator
    few = queries()
    for _ in range(35):
        make_alert("warning")
    assert queries() == few


@pytest.fixture
def one_critical_alert(transactional_db):
    make_alert("critical", title="Breaker open on scorer-v2")
    cache.delete(BANNER_CACHE_KEY)


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_count_tiles_are_readable_and_quiet_when_nothing_is_open(one_critical_alert, live_server, browser):
    # (the data is made before the browser starts: Playwright's loop makes the ORM refuse to run)
    from dataflare_portal.core.tests.test_shell_assets import contrast

    page = browser.new_page()
    page.goto(live_server.url + "/alerts/")

    def colours(selector: str) -> tuple[str, str, bool]:
        return page.eval_on_selector(
            selector,
            """el => { const s = getComputedStyle(el);
                const hex = c => '#' + c.match(/\\d+/g).slice(0, 3)
                    .map(n => (+n).toString(16).padStart(2, '0')).join('');
                return [hex(s.color), hex(s.backgroundColor), el.classList.contains('df-alert-count-zero')]; }""",
        )

    critical_fg, critical_bg, critical_zero = colours(".df-alert-count-critical")
    assert not critical_zero and critical_bg == "#b00020" and critical_fg == "#ffffff"  # not the link colour
    warning_fg, warning_bg, warning_zero = colours(".df-alert-count-warning")
    assert warning_zero and warning_bg != "#fff4ce"  # no open warning: a neutral tile
    for fg, bg in ((critical_fg, critical_bg), (warning_fg, warning_bg)):
        assert contrast(fg, bg) >= 4.5, (fg, bg)


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_the_banner_link_keeps_the_banner_colours_inside_the_admin_header(one_critical_alert, live_server, browser):
    from dataflare_portal.core.tests.test_shell_assets import contrast

    page = browser.new_page()
    for path in ("/", "/dashboard/"):
        page.goto(live_server.url + path)
        fg, bg = page.eval_on_selector(
            ".df-banner-critical a",
            """a => { const hex = c => '#' + c.match(/\\d+/g).slice(0, 3)
                    .map(n => (+n).toString(16).padStart(2, '0')).join('');
                return [hex(getComputedStyle(a).color),
                        hex(getComputedStyle(a.closest('.df-banner-critical')).backgroundColor)]; }""",
        )
        assert contrast(fg, bg) >= 4.5, (path, fg, bg)  # the header's white link colour gave about 1.2:1
