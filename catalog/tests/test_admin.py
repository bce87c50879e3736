"""Catalog admin: pages render, the secret is write-only, actions call the services."""

import json

import pytest

from catalog.connectors import get_connector
from catalog.models import DataSource

from .factories import DatasetFactory, DatasetVersionFactory, FileSourceFactory, ProjectFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser(client, admin_user):
    client.force_login(admin_user)
    return client


@pytest.mark.parametrize("model", ["project", "datasource", "dataset", "datasetversion"])
def test_changelists_and_search_render(browser, model, file_root):
    DatasetVersionFactory()
    assert browser.get(f"/catalog/{model}/").status_code == 200
    assert browser.get(f"/catalog/{model}/?q=x").status_code == 200


def test_datasource_password_is_write_only(browser, file_root):
    project = ProjectFactory()
    form = {
        "project": project.pk,
        "name": "files",
        "kind": "file",
        "description": "",
        "config": json.dumps({"root": "."}),
        "password": "hunter22",
    }
    resp = browser.post("/catalog/datasource/add/", form)
    assert resp.status_code == 302, resp.content.decode()[-3000:]
    source = DataSource.objects.get(name="files")
    assert get_connector(source).secret == {"password": "hunter22"}
    page = browser.get(f"/catalog/datasource/{source.pk}/change/").content.decode()
    assert "hunter22" not in page and source.secret_ciphertext not in page
    # Saving without a password keeps the stored one.
    form.pop("password")
    form["description"] = "changed"
    assert browser.post(f"/catalog/datasource/{source.pk}/change/", form).status_code == 302
    source.refresh_from_db()
    assert source.description == "changed" and get_connector(source).secret == {"password": "hunter22"}


def test_datasource_form_shows_config_errors_by_field(browser, file_root):
    form = {"project": ProjectFactory().pk, "name": "bad", "kind": "file", "config": json.dumps({"root": "/etc"})}
    resp = browser.post("/catalog/datasource/add/", form)
    assert resp.status_code == 200 and "outside the allowed file roots" in resp.content.decode()


def test_test_connection_action(browser, file_root):
    good, bad = FileSourceFactory(), FileSourceFactory(config={"root": "absent"})
    resp = browser.post(
        "/catalog/datasource/", {"action": "test_connection", "_selected_action": [good.pk, bad.pk]}, follow=True
    )
    assert resp.status_code == 200
    good.refresh_from_db()
    bad.refresh_from_db()
    assert (good.status, bad.status) == ("ok", "error")


def test_dataset_profile_action_and_preview(browser, file_root):
    (file_root / "p.jsonl").write_text("".join(json.dumps({"n": i, "text": f"<row {i}>"}) + "\n" for i in range(12)))
    dataset = DatasetFactory(location="p.jsonl")
    browser.post("/catalog/dataset/", {"action": "profile", "_selected_action": [dataset.pk]}, follow=True)
    dataset.refresh_from_db()
    assert dataset.row_count == 12 and dataset.schema[0] == {"name": "n", "type": "int", "nullable": False}
    page = browser.get(f"/catalog/dataset/{dataset.pk}/change/").content.decode()
    assert "&lt;row 9&gt;" in page and "<row 9>" not in page  # sample shown, escaped
    assert 'class="df-schema"' in page


def test_version_page_shows_lineage_read_only(browser):
    parent = DatasetVersionFactory()
    child = DatasetVersionFactory()
    child.parents.add(parent)
    page = browser.get(f"/catalog/datasetversion/{child.pk}/change/").content.decode()
    assert f"/catalog/datasetversion/{parent.pk}/change/" in page
    assert browser.get("/catalog/datasetversion/add/").status_code == 403
