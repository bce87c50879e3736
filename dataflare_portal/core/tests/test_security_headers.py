"""Content-Security-Policy on every page (and the pages still work in Chromium); no-store on the API."""

from __future__ import annotations

import pytest
from django.urls import reverse


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/", "/dashboard/", "/api/docs/", "/api/redoc/", "/catalog/project/add/"])
def test_every_page_has_a_strict_csp(client, path):
    response = client.get(path)
    assert response.status_code == 200
    policy = response["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "object-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert "'unsafe-eval'" not in policy and "script-src 'self' 'nonce-" in policy


@pytest.mark.django_db
def test_the_nonce_is_fresh_per_request_and_marks_inline_scripts(client):
    from tasks.tests.factories import ReviewItemFactory

    ReviewItemFactory()
    url = reverse("admin:tasks_reviewitem_review")
    first, second = client.get(url), client.get(url)
    nonce = first["Content-Security-Policy"].split("'nonce-")[1].split("'")[0]
    assert nonce != second["Content-Security-Policy"].split("'nonce-")[1].split("'")[0]
    assert f'<script nonce="{nonce}">' in first.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path", ["/api/v1/", "/api/v1/catalog/projects/", "/api/v1/no-such-thing/", "/api/schema/", "/api/v1/logs/"]
)
def test_api_responses_are_never_cached(client, path):
    response = client.get(path)
    assert response["Cache-Control"] == "no-store", path


@pytest.fixture
def demo_data(transactional_db):
    """Seeded before the browser starts (Playwright's loop would make ORM calls async-unsafe)."""
    from django.core.management import call_command

    from tasks.tests.factories import ReviewItemFactory

    call_command("seed_demo", "--days", "1", verbosity=0)
    ReviewItemFactory()


@pytest.mark.browser
def test_pages_work_under_the_csp_in_chromium(demo_data, live_server, browser):
    checks = {
        "/": "#content",
        "/dashboard/": ".js-plotly-plot",
        "/api/docs/": ".swagger-ui .info",
        "/api/redoc/": ".api-content",
        "/catalog/project/add/": "#project_form",
        reverse("admin:tasks_reviewitem_review"): "#content",
    }
    page = browser.new_page()
    violations: list[str] = []
    page.on(
        "console",
        lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    page.on("pageerror", lambda exc: violations.append(f"page error: {exc}"))
    for path, selector in checks.items():
        response = page.goto(live_server.url + path)
        assert response.status == 200, path
        page.wait_for_selector(selector, timeout=120_000)  # the schema takes a while on a busy machine
    # ReDoc's sidebar links its vendor logo from a CDN: blocking it is the point (the portal is offline).
    violations = [v for v in violations if "https://cdn.redoc.ly/" not in v]
    assert not violations, violations
