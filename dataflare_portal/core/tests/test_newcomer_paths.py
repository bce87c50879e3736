"""What a newcomer meets: redirects for /admin/ and /api/, the favicon, the API's way back, no CDN, a11y refs."""

import re

import pytest

pytestmark = pytest.mark.django_db

PAGES = ["/", "/system/config/", "/dashboard/", "/catalog/datasource/add/", "/alerts/alertrule/add/"]


def test_admin_and_api_roots_redirect(client):
    assert client.get("/admin/")["Location"] == "/"
    assert client.get("/admin/catalog/datasource/?q=x")["Location"] == "/catalog/datasource/?q=x"
    response = client.get("/api/")
    assert response.status_code == 302 and response["Location"] == "/api/v1/"


def test_every_page_has_an_icon_and_favicon_ico_resolves(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 302
    assert client.get(response["Location"]).status_code == 200
    for url in PAGES:
        html = client.get(url).content.decode()
        assert 'rel="icon"' in html, url


def test_the_browsable_api_links_back_to_the_portal(client):
    html = client.get("/api/v1/", HTTP_ACCEPT="text/html").content.decode()
    assert 'href="/" id="df-api-back"' in html
    assert "django-rest-framework.org" not in html


def test_redoc_keeps_images_and_fonts_on_this_origin(client):
    html = client.get("/api/redoc/").content.decode()
    assert "img-src 'self'" in html and "font-src 'self'" in html
    assert "fonts.googleapis" not in html


@pytest.mark.parametrize("url", PAGES)
def test_every_aria_reference_points_at_an_element(client, url):
    html = client.get(url).content.decode()
    ids = set(re.findall(r'\sid="([^"]+)"', html))
    for attr in ("aria-describedby", "aria-labelledby", "aria-controls"):
        for ref in re.findall(rf'{attr}="([^"]+)"', html):
            missing = [r for r in ref.split() if r not in ids]
            assert not missing, f"{url}: {attr} -> {missing}"


def test_the_language_switcher_changes_only_on_an_explicit_submit(client):
    html = client.get("/").content.decode()
    form = re.search(r'<form class="df-lang".*?</form>', html, re.S).group(0)
    assert 'type="submit"' in form and "<noscript>" not in form and "autosubmit" not in form
