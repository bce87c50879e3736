"""Catalog API: CRUD, actions, write-only credentials, audit entries, permissions and query budgets."""

import json

import pytest
from rest_framework.test import APIClient

from catalog.connectors import get_connector
from catalog.models import Dataset, DataSource
from dataflare_portal.core.models import AuditLogEntry

from .factories import DatasetFactory, DatasetVersionFactory, FileSourceFactory, ProjectFactory

pytestmark = pytest.mark.django_db
API = "/api/v1/catalog"


@pytest.fixture
def api(admin_user):
    client = APIClient()
    client.force_authenticate(admin_user)
    return client


def test_it_creates_a_postgres_source_with_a_write_only_encrypted_password(api, pg_config):
    project = ProjectFactory()
    body = {
        "project": project.pk,
        "name": "warehouse",
        "kind": "postgresql",
        "config": pg_config,
        "password": "s3cr3t!",
    }
    resp = api.post(f"{API}/data-sources/", body, format="json")
    assert resp.status_code == 201, resp.content
    assert "password" not in resp.json() and resp.json()["has_secret"] is True
    source = DataSource.objects.get(pk=resp.json()["id"])
    assert source.secret_ciphertext and "s3cr3t!" not in source.secret_ciphertext
    assert get_connector(source).secret == {"password": "s3cr3t!"}
    detail = api.get(f"{API}/data-sources/{source.pk}/")
    assert "s3cr3t!" not in detail.content.decode()
    entries = AuditLogEntry.objects.filter(object_type="catalog.datasource", object_id=str(source.pk))
    assert entries.count() == 1
    assert "s3cr3t!" not in json.dumps([e.after for e in entries]) and "ciphertext" not in json.dumps(entries[0].after)
    # Update without a password keeps it; an empty one clears it.
    api.patch(f"{API}/data-sources/{source.pk}/", {"description": "dw"}, format="json")
    source.refresh_from_db()
    assert get_connector(source).secret == {"password": "s3cr3t!"}
    api.patch(f"{API}/data-sources/{source.pk}/", {"password": ""}, format="json")
    source.refresh_from_db()
    assert source.secret_ciphertext == ""


@pytest.mark.parametrize(
    "kind,config,field_text",
    [
        ("file", {"root": "../../etc"}, "root"),
        ("postgresql", {"host": "h", "database": "d", "user": "u", "port": "x"}, "port"),
        ("hdfs", {}, "kind"),
        ("s3", {"bucket": "bkt"}, "endpoint"),
        ("postgresql", {"host": "169.254.169.254", "database": "d", "user": "u"}, "ALLOWED_PRIVATE_HOSTS"),
    ],
)
def test_bad_configs_get_a_400_naming_the_field(api, kind, config, field_text):
    body = {"project": ProjectFactory().pk, "name": "bad", "kind": kind, "config": config}
    resp = api.post(f"{API}/data-sources/", body, format="json")
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert field_text in json.dumps(error["fields"])
    assert not DataSource.objects.filter(name="bad").exists()


def test_test_action_updates_status_and_audits(api, file_root):
    source = FileSourceFactory()
    resp = api.post(f"{API}/data-sources/{source.pk}/test/")
    assert resp.status_code == 200 and resp.json()["ok"] is True and resp.json()["status"] == "ok"
    source.refresh_from_db()
    assert source.status == "ok" and source.last_checked_at is not None
    bad = FileSourceFactory(config={"root": "missing"})
    resp = api.post(f"{API}/data-sources/{bad.pk}/test/")
    assert resp.json()["ok"] is False
    bad.refresh_from_db()
    assert bad.status == "error" and "does not exist" in bad.last_error
    assert AuditLogEntry.objects.filter(object_type="catalog.datasource", action="run").count() == 2


def test_dataset_profile_and_preview(api, file_root):
    (file_root / "d.jsonl").write_text("".join(json.dumps({"id": i, "text": f"t{i}"}) + "\n" for i in range(30)))
    dataset = DatasetFactory(location="d.jsonl")
    resp = api.post(f"{API}/datasets/{dataset.pk}/profile/", {"preview_limit": 3}, format="json")
    assert resp.status_code == 200, resp.content
    body = resp.json()
    assert body["row_count"] == 30 and [f["name"] for f in body["schema"]] == ["id", "text"]
    assert len(body["preview"]) == 3
    dataset.refresh_from_db()
    assert dataset.row_count == 30 and dataset.profiled_at is not None
    assert AuditLogEntry.objects.filter(object_type="catalog.dataset", object_id=str(dataset.pk)).exists()
    resp = api.get(f"{API}/datasets/{dataset.pk}/preview/?limit=5")
    assert [r["id"] for r in resp.json()["records"]] == [0, 1, 2, 3, 4]
    assert api.get(f"{API}/datasets/{dataset.pk}/preview/?limit=0").status_code == 400


def test_profile_of_a_missing_file_is_a_400(api, file_root):
    dataset = DatasetFactory(location="nope.jsonl")
    resp = api.post(f"{API}/datasets/{dataset.pk}/profile/", {}, format="json")
    assert resp.status_code == 400 and "location" in resp.json()["error"]["fields"]


def test_dataset_location_escaping_the_root_is_refused(api, file_root):
    source = FileSourceFactory()
    body = {"project": source.project_id, "source": source.pk, "name": "x", "format": "jsonl", "location": "../x"}
    resp = api.post(f"{API}/datasets/", body, format="json")
    assert resp.status_code == 400 and "location" in resp.json()["error"]["fields"]
    body.update(location="ok.jsonl", format="table")
    resp = api.post(f"{API}/datasets/", body, format="json")
    assert resp.status_code == 400 and "format" in resp.json()["error"]["fields"]
    body.update(format="jsonl")
    assert api.post(f"{API}/datasets/", body, format="json").status_code == 201
    assert Dataset.objects.filter(name="x").count() == 1


def test_versions_are_read_only_with_lineage(api):
    parent = DatasetVersionFactory()
    child = DatasetVersionFactory()
    child.parents.add(parent)
    resp = api.get(f"{API}/dataset-versions/{child.pk}/")
    assert resp.json()["parents"] == [parent.pk]
    assert api.get(f"{API}/dataset-versions/{parent.pk}/").json()["children"] == [child.pk]
    assert api.post(f"{API}/dataset-versions/", {}, format="json").status_code == 405


def test_roles(local_auth, viewer_user, operator_user, file_root):
    source = FileSourceFactory()
    client = APIClient()
    client.force_authenticate(viewer_user)
    assert client.get(f"{API}/data-sources/").status_code == 200
    assert client.post(f"{API}/data-sources/{source.pk}/test/").status_code == 403
    client.force_authenticate(operator_user)
    assert client.post(f"{API}/data-sources/{source.pk}/test/").status_code == 200
    assert client.delete(f"{API}/data-sources/{source.pk}/").status_code == 403


@pytest.mark.parametrize(
    "path,make",
    [
        ("projects", lambda: ProjectFactory()),
        ("data-sources", lambda: FileSourceFactory()),
        ("datasets", lambda: DatasetFactory()),
        ("dataset-versions", lambda: DatasetVersionFactory()),
    ],
)
def test_list_query_budget(api, django_assert_max_num_queries, path, make):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def queries_for_list(expected_rows):
        with CaptureQueriesContext(connection) as ctx:
            resp = api.get(f"{API}/{path}/")
        assert resp.status_code == 200 and len(resp.json()["results"]) == expected_rows
        return len(ctx)

    for _ in range(3):
        make()
    api.get(f"{API}/{path}/")  # warm per-process caches (config, session) so both counts compare like for like
    small = queries_for_list(3)
    for _ in range(12):
        make()
    # The count must not grow with the rows (no N+1) and stays within a fixed budget.
    with django_assert_max_num_queries(small):
        resp = api.get(f"{API}/{path}/")
    assert len(resp.json()["results"]) == 15
    assert small <= 10
