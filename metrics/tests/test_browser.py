"""The dashboard in a real headless browser (Debian's chromium): no request leaves the portal."""

import pytest
from django.urls import reverse

from conftest import chromium_path

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(chromium_path() is None, reason="Debian's chromium is not installed (apt-get install chromium)"),
]


def test_it_loads_and_refreshes_offline(history_data, live_server, browser):
    page = browser.new_page(accept_downloads=True)
    outside, errors = [], []

    def guard(route):
        if route.request.url.startswith(live_server.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", guard)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    url = live_server.url + reverse("metrics:dashboard") + "?range=7d&refresh=1"
    page.goto(url)
    for name in ("stages", "tokens", "throughput", "requests", "history"):
        page.wait_for_selector(f"#df-chart-{name} svg.main-svg", timeout=20000)
    # The refresh fetches figures and KPIs and redraws in place (no navigation).
    # (CSS selectors, not wait_for_function: the page's Content-Security-Policy forbids eval.)
    page.wait_for_selector(
        "#df-dashboard[data-refreshes]:not([data-refreshes='0']):not([data-refreshes='1'])",
        state="attached",
        timeout=20000,
    )
    assert page.url == url
    assert page.locator('[data-kpi="records_processed"] [data-role="value"]').inner_text().strip() != ""
    # The line/bar toggle is a keyboard-operable button that redraws the history chart.
    page.focus('.df-kind[data-kind="bar"]')
    page.keyboard.press("Enter")
    page.wait_for_selector("#df-chart-history .barlayer .point", state="attached", timeout=10000)
    assert "chart=bar" in page.url
    # PNG export: plotly's own modebar button downloads the chart, drawn in the browser.
    button = page.locator("#df-chart-stages .modebar-btn[data-title*='png' i]")
    page.hover("#df-chart-stages")
    with page.expect_download(timeout=20000) as download:
        button.click()
    assert download.value.suggested_filename == "dataflare-stages.png"
    assert outside == [] and errors == []


def test_in_chinese_and_dark_mode_plotly_speaks_chinese_and_offers_no_share(history_data, live_server, browser):
    context = browser.new_context(viewport={"width": 1366, "height": 900}, color_scheme="dark")
    context.add_cookies([{"name": "django_language", "value": "zh-hans", "url": live_server.url}])
    page = context.new_page()
    outside, errors = [], []

    def guard(route):
        if route.request.url.startswith(live_server.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", guard)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(live_server.url + reverse("metrics:dashboard") + "?range=7d")
    for name in ("stages", "tokens", "throughput", "requests", "history"):
        page.wait_for_selector(f"#df-chart-{name} svg.main-svg", timeout=20000)
    page.hover("#df-chart-stages")
    titles = page.eval_on_selector_all("#df-chart-stages .modebar-btn", "bs => bs.map(b => b.dataset.title || '')")
    assert titles, "the modebar is drawn"
    assert not [t for t in titles if "Share" in t or "分享" in t or "cloud" in t.lower()], titles
    # plotly's zh-CN locale: the toolbar speaks Chinese ("下载图表为PNG格式") and so do date axes.
    assert any("下载" in t for t in titles), titles
    ticks = page.eval_on_selector_all("#df-chart-history .xtick text", "ts => ts.map(t => t.textContent)")
    assert any(any("\u4e00" <= ch <= "\u9fff" for ch in t) for t in ticks), ticks
    # Dark theme (system scheme, admin theme "auto"): chart text takes the admin's light foreground.
    fill = page.eval_on_selector("#df-chart-stages .gtitle", "e => getComputedStyle(e).fill")
    fg = page.evaluate("getComputedStyle(document.documentElement).getPropertyValue('--body-fg').trim()")
    assert fill.replace(" ", "") != "rgb(34,34,34)" and fg.lower() not in ("#222", "#333", "")
    assert outside == [] and errors == []
    context.close()
