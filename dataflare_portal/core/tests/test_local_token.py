"""AUTH_MODE=none: browsers keep CSRF protection, non-browser clients use the local API token."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

from catalog.models import Project

ROOT = Path(__file__).resolve().parents[3]
BODY = '{"name": "From curl", "slug": "from-curl"}'


@pytest.fixture
def local_token(settings, tmp_path):
    settings.AUTH_MODE = "none"
    path = tmp_path / "api_token"
    path.write_text("local-token-for-tests-0123456789\n")
    settings.LOCAL_API_TOKEN_FILE = path
    return "local-token-for-tests-0123456789"


@pytest.fixture
def browser():
    return Client(enforce_csrf_checks=True)


@pytest.mark.django_db
def test_a_plain_post_still_needs_csrf(browser, local_token):
    response = browser.post("/api/v1/catalog/projects/", BODY, content_type="application/json")
    assert response.status_code == 403
    assert "CSRF" in response.json()["error"]["message"]
    assert not Project.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("keyword", ["Bearer", "Token", "bearer"])
def test_the_local_token_writes_without_csrf(browser, local_token, keyword):
    auth = f"{keyword} {local_token}"
    response = browser.post("/api/v1/catalog/projects/", BODY, content_type="application/json", HTTP_AUTHORIZATION=auth)
    assert response.status_code == 201, response.content
    assert Project.objects.get().slug == "from-curl"
    from dataflare_portal.core.models import AuditLogEntry

    assert AuditLogEntry.objects.get(object_type="catalog.project").actor_name == "operator"


@pytest.mark.django_db
def test_a_wrong_local_token_is_refused(browser, local_token):
    response = browser.post(
        "/api/v1/catalog/projects/", BODY, content_type="application/json", HTTP_AUTHORIZATION="Bearer not-the-token"
    )
    assert response.status_code == 401
    assert not Project.objects.exists()


@pytest.mark.django_db
def test_the_local_token_means_nothing_in_local_mode(browser, local_token, settings):
    settings.AUTH_MODE = "local"
    response = browser.get("/api/v1/catalog/projects/", HTTP_AUTHORIZATION=f"Bearer {local_token}")
    assert response.status_code == 401


@pytest.mark.django_db
def test_user_tokens_work_with_bearer(browser, local_auth, operator_user):
    from rest_framework.authtoken.models import Token

    key = Token.objects.create(user=operator_user).key
    assert browser.get("/api/v1/catalog/projects/", HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 200
    assert browser.get("/api/v1/catalog/projects/", HTTP_AUTHORIZATION=f"Token {key}").status_code == 200
    assert browser.get("/api/v1/catalog/projects/", HTTP_AUTHORIZATION="Bearer nope").status_code == 401


def test_the_token_file_is_created_on_first_start_with_mode_0600(tmp_path):
    env = {**os.environ, "DATA_DIR": str(tmp_path), "ENV_FILE": str(tmp_path / "none.env"), "AUTH_MODE": "none"}
    env["DJANGO_SETTINGS_MODULE"] = "dataflare_portal.settings"
    code = "import django; django.setup(); from django.conf import settings; print(settings.LOCAL_API_TOKEN_FILE)"
    first = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    path = Path(first.stdout.strip())
    assert path == tmp_path / "api_token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()
    assert len(token) >= 40
    # A second start keeps it.
    subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True, capture_output=True, timeout=60)
    assert path.read_text().strip() == token


@pytest.mark.django_db(transaction=True)
def test_the_curl_example_in_docs_api_md_works(live_server, local_token, settings):
    """The documented curl command, run as written (with this test's token file and server)."""
    text = (ROOT / "docs/api.md").read_text()
    block = re.search(r"^    TOKEN=\$\(cat var/api_token\)\n((?:    .*\n)+)", text, re.M)
    assert block, "docs/api.md lost its local-token curl example"
    command = "TOKEN=$(cat var/api_token)\n" + "".join(line[4:] for line in block.group(1).splitlines(True))
    command = command.replace("var/api_token", str(settings.LOCAL_API_TOKEN_FILE))
    command = command.replace("http://127.0.0.1:8000", live_server.url)
    result = subprocess.run(
        ["bash", "-c", "set -e\n" + command.replace("curl ", "curl -sS --fail-with-body ")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert Project.objects.filter(name="Demo from curl").exists()
