"""Issue 11, finding 5: the smaller HTTP holes (each test fails on the code before the fix)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from catalog.tests.factories import DatasetVersionFactory
from tasks.tests.factories import QCLotFactory, TaskRunFactory


@pytest.fixture
def staff_without_role(db, django_user_model):
    return django_user_model.objects.create_user(username="sam-staff", password="pw-sam", is_staff=True)


@pytest.fixture
def group_admin(db, django_user_model):
    """An admin by group membership only (not a superuser)."""
    from dataflare_portal.core.services import roles_ensure

    user = django_user_model.objects.create_user(username="ada-groupadmin", password="pw-ada", is_staff=True)
    user.groups.add(roles_ensure()["admin"])
    return user


# ---- Anonymous API root --------------------------------------------------------------------------
def test_anonymous_api_root_is_401(client, local_auth, db):
    response = client.get("/api/v1/")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


def test_api_root_answers_a_viewer(client, local_auth, viewer_user):
    client.force_login(viewer_user)
    assert client.get("/api/v1/").status_code == 200


# ---- Staff without a role ----------------------------------------------------------------------------
def test_staff_without_a_role_gets_no_page(client, local_auth, staff_without_role):
    run = TaskRunFactory()
    client.force_login(staff_without_role)
    index = client.get("/")
    assert index.status_code == 302 and "/login/" in index["Location"]
    for url in (f"/runs/{run.pk}/", f"/runs/{run.pk}/progress.json", "/workers/"):
        assert client.get(url).status_code == 403, url
    assert client.post(f"/runs/{run.pk}/cancel/").status_code == 403


def test_a_viewer_gets_the_pages_but_no_actions(client, local_auth, viewer_user):
    run = TaskRunFactory()
    client.force_login(viewer_user)
    assert client.get("/").status_code == 200
    for url in (f"/runs/{run.pk}/", f"/runs/{run.pk}/progress.json", "/workers/"):
        assert client.get(url).status_code == 200, url
    assert client.post(f"/runs/{run.pk}/cancel/").status_code == 403


# ---- Unknown API URLs are JSON 404 for every method ------------------------------------------
@pytest.mark.django_db
@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_a_write_to_an_unknown_api_url_is_a_json_404(method):
    client = Client(enforce_csrf_checks=True)
    response = getattr(client, method)("/api/v1/no-such-thing/", "{}", content_type="application/json")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.django_db
def test_a_csrf_failure_under_api_is_the_json_error_shape():
    client = Client(enforce_csrf_checks=True)
    response = client.post("/api/v1/catalog/projects/", "{}", content_type="application/json")
    assert response.status_code == 403
    assert response.json()["error"]["code"] in ("csrf_failed", "permission_denied")
    assert "CSRF" in response.json()["error"]["message"]


# ---- Template versions: the schema says what the endpoint returns ----------------------------
def test_template_versions_schema_matches_the_response(client, db):
    from drf_spectacular.generators import SchemaGenerator

    from pipelines.tests.factories import PipelineTemplateFactory

    template = PipelineTemplateFactory()
    body = client.get(f"/api/v1/pipelines/templates/{template.pk}/versions/").json()
    spec = SchemaGenerator().get_schema(request=None, public=True)
    op = spec["paths"]["/api/v1/pipelines/templates/{id}/versions/"]["get"]
    schema = op["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema["type"] == "array" and isinstance(body, list)
    item = spec["components"]["schemas"][schema["items"]["$ref"].rsplit("/", 1)[1]]
    assert set(item["properties"]) == set(body[0]) and "stats" in body[0]
    assert not any(p["name"] in ("limit", "offset", "search") for p in op.get("parameters", []))


# ---- Strict list queries ---------------------------------------------------------------------------
@pytest.mark.django_db
@pytest.mark.parametrize(
    ("url", "param"),
    [
        ("/api/v1/tasks/qc-lots/?status=pending", "status"),
        ("/api/v1/catalog/projects/?limit=false", "limit"),
        ("/api/v1/catalog/projects/?offset=null", "offset"),
        ("/api/v1/catalog/projects/?offset=-5", "offset"),
        ("/api/v1/catalog/dataset-versions/?version=0.5", "version"),
        ("/api/v1/pipelines/templates/?version=abc", "version"),
        ("/api/v1/catalog/projects/?nmae=x", "nmae"),
        ("/api/v1/config/?grup=x", "grup"),
        ("/api/v1/alerts/budget-pauses/?project=1", "project"),
    ],
)
def test_a_list_refuses_unknown_or_malformed_query_parameters(client, url, param):
    response = client.get(url)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert param in error["fields"], error
    assert error["message"].startswith(param)


@pytest.mark.django_db
def test_known_filters_still_filter(client):
    QCLotFactory()
    QCLotFactory(overridden=True)
    assert len(client.get("/api/v1/tasks/qc-lots/?decision=pending").json()["results"]) == 1
    DatasetVersionFactory(version=3)
    ok = client.get("/api/v1/catalog/dataset-versions/?version=3&limit=10&offset=0&ordering=-id&search=&brief=1")
    assert ok.status_code == 200, ok.content
    assert len(ok.json()["results"]) == 1


# ---- Admins manage API tokens -------------------------------------------------------------------
def test_a_group_admin_manages_api_tokens_in_the_admin(client, local_auth, group_admin, viewer_user):
    from dataflare_portal.core.auth import roles_sync

    roles_sync()
    client.force_login(group_admin)
    assert client.get("/authtoken/tokenproxy/").status_code == 200
    response = client.post("/authtoken/tokenproxy/add/", {"user": viewer_user.pk})
    assert response.status_code == 302, response.content[:2000]
    from rest_framework.authtoken.models import Token

    assert Token.objects.filter(user=viewer_user).exists()
    assert Group.objects.get(name="operator").permissions.filter(content_type__app_label="authtoken").count() == 0


# ---- SECRETS_ENCRYPTION_KEYS is checked at start ------------------------------------------------
def test_an_invalid_secrets_encryption_key_fails_the_system_check(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from cryptography.fernet import Fernet

    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "DATA_DIR": str(tmp_path), "ENV_FILE": str(tmp_path / "none.env")}
    env["SECRETS_ENCRYPTION_KEYS"] = f"{Fernet.generate_key().decode()},not-a-fernet-key-value"
    bad = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )
    assert bad.returncode != 0
    assert "dataflare.E003" in bad.stderr and "entry 2 of 2" in bad.stderr
    assert "not-a-fernet-key-value" not in bad.stderr + bad.stdout
    env["SECRETS_ENCRYPTION_KEYS"] = Fernet.generate_key().decode()
    good = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )
    assert good.returncode == 0, good.stderr
