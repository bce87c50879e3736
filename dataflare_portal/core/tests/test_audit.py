"""Audit log: request ids in headers, rows and JSON logs; bulk admin deletes; the read-only API."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from dataflare_portal.core.config import config_set
from dataflare_portal.core.models import AuditLogEntry, SystemConfig

ROOT = Path(__file__).resolve().parents[3]


def test_it_stores_the_request_id_it_returns(local_auth, admin_user):
    api = APIClient()
    api.force_authenticate(admin_user)
    response = api.patch("/api/v1/config/raw_retention_days/", {"value": 12}, format="json", HTTP_X_REQUEST_ID="req-42")
    assert response.status_code == 200 and response["X-Request-ID"] == "req-42"
    entry = AuditLogEntry.objects.get()
    assert entry.request_id == "req-42" and entry.actor == admin_user
    response = api.get("/api/v1/audit-log/?request_id=req-42")
    assert [e["id"] for e in response.json()["results"]] == [entry.id]


def test_admin_bulk_delete_leaves_one_entry_per_row(client, local_auth, admin_user):
    for key in ("raw_retention_days", "batch_size_default", "dashboard_refresh_seconds"):
        config_set(key=key, value={"raw_retention_days": 9, "batch_size_default": 50}.get(key, 5), actor=admin_user)
    AuditLogEntry.objects.all().delete()
    client.force_login(admin_user)
    pks = list(SystemConfig.objects.values_list("pk", flat=True))
    response = client.post("/core/systemconfig/", {"action": "delete_selected", "_selected_action": pks, "post": "yes"})
    assert response.status_code == 302
    assert not SystemConfig.objects.exists()
    # The config admin deletes through config_reset (a "config" entry), so every process reloads.
    deletes = AuditLogEntry.objects.filter(action="config", object_type="core.systemconfig")
    assert sorted(int(e.object_id) for e in deletes) == sorted(pks)
    assert AuditLogEntry.objects.count() == len(pks)


def test_audit_api_is_read_only_and_filterable(local_auth, admin_user, viewer_user):
    config_set(key="raw_retention_days", value=9, actor=admin_user)
    api = APIClient()
    api.force_authenticate(viewer_user)
    rows = api.get("/api/v1/audit-log/?action=config").json()["results"]
    assert len(rows) == 1 and rows[0]["actor_name"] == "alice-admin"
    assert api.get("/api/v1/audit-log/?action=create").json()["results"] == []
    api.force_authenticate(admin_user)
    assert api.delete(f"/api/v1/audit-log/{rows[0]['id']}/").status_code == 405
    assert api.post("/api/v1/audit-log/", {}, format="json").status_code == 405


@pytest.mark.integration
def test_json_logs_carry_the_request_id(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(LOG_FORMAT="json", DEBUG="true", AUTH_MODE="local", DATA_DIR=str(tmp_path))
    script = (
        "from django.test import Client\n"
        "r = Client().get('/api/v1/no-such-thing/', HTTP_X_REQUEST_ID='trace-json-1')\n"
        "print('STATUS', r.status_code, r['X-Request-ID'])\n"
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "STATUS 404 trace-json-1" in result.stdout, result.stderr[-2000:]
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    not_found = [line for line in lines if line["logger"] == "django.request"]
    assert not_found and not_found[0]["request_id"] == "trace-json-1"
    assert {"time", "level", "logger", "message", "request_id"} <= set(not_found[0])


def test_portal_admin_bulk_delete_audits_each_row(client, local_auth, admin_user):
    from django.apps import apps

    Project = apps.get_model("catalog", "Project")
    pks = [Project.objects.create(name=f"bulk {i}", slug=f"bulk-{i}").pk for i in range(3)]
    client.force_login(admin_user)
    response = client.post("/catalog/project/", {"action": "delete_selected", "_selected_action": pks, "post": "yes"})
    assert response.status_code == 302 and not Project.objects.filter(pk__in=pks).exists()
    deletes = AuditLogEntry.objects.filter(action="delete", object_type="catalog.project")
    assert sorted(int(e.object_id) for e in deletes) == sorted(pks)
    assert all(e.actor == admin_user and e.before["name"].startswith("bulk") for e in deletes)
