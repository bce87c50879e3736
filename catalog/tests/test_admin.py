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
        "name": "warehouse",
        "kind": "postgresql",
        "description": "",
        "config": json.dumps({"host": "db.example.test", "database": "dw", "user": "reader"}),
        "password": "hunter22",
    }
    resp = browser.post("/catalog/datasource/add/", form)
    assert resp.status_code == 302, resp.content.decode()[-3000:]
    source = DataSource.objects.get(name="warehouse")
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


def test_a_file_source_takes_no_password(browser, file_root):
    form = {
        "project": ProjectFactory().pk,
        "name": "files",
        "kind": "file",
        "config": json.dumps({"root": "."}),
        "password": "hunter22",
    }
    resp = browser.post("/catalog/datasource/add/", form)
    assert resp.status_code == 200 and "takes no password" in resp.content.decode()
    assert not DataSource.objects.filter(name="files").exists()


def test_the_source_form_is_generated_per_connector_kind(browser, file_root):
    page = browser.get("/catalog/datasource/add/").content.decode()
    spec = json.loads(page.split('id="id_config-schema" type="application/json">')[1].split("</script>")[0])
    assert set(spec["schemas"]) == {"file", "postgresql", "s3", "mysql", "http"}
    assert spec["schemas"]["postgresql"]["properties"]["sslmode"]["enum"]
    assert spec["schemas"]["s3"]["required"] == ["endpoint", "bucket"]
    # Files hide the credentials; each other kind shows only its own credential inputs.
    assert spec["extras"]["file"]["hide"] == ["df-credentials"]
    assert spec["extras"]["postgresql"]["hide"] == spec["extras"]["mysql"]["hide"]
    others = {"field-bearer_token", "field-headers"}  # the http connector's
    assert set(spec["extras"]["postgresql"]["hide"]) == {"field-access_key_id", "field-secret_access_key"} | others
    assert set(spec["extras"]["s3"]["hide"]) == {"field-password"} | others
    assert set(spec["extras"]["http"]["hide"]) == {"field-access_key_id", "field-secret_access_key"}
    assert '<textarea name="headers"' in page and 'name="bearer_token"' in page
    assert 'name="access_key_id"' in page and 'name="secret_access_key"' in page
    assert str(file_root.resolve()) in spec["extras"]["file"]["help"]
    assert {"value": str(file_root.resolve()), "label": "allowed root"} in spec["references"]["root"]
    assert 'class="module aligned df-credentials"' in page


def test_config_errors_carry_their_json_path_to_the_form(browser, file_root):
    form = {
        "project": ProjectFactory().pk,
        "name": "pg",
        "kind": "postgresql",
        "config": json.dumps({"host": "db.example.test", "database": "dw", "user": "u", "port": 0}),
    }
    page = browser.post("/catalog/datasource/add/", form).content.decode()
    spec = json.loads(page.split('id="id_config-schema" type="application/json">')[1].split("</script>")[0])
    assert [e["path"] for e in spec["errors"]] == ["$.port"], spec["errors"]


def test_the_test_connection_button_on_the_source_page(browser, file_root):
    source = FileSourceFactory()
    page = browser.get(f"/catalog/datasource/{source.pk}/change/").content.decode()
    url = f"/catalog/datasource/{source.pk}/test-connection/"
    assert f'action="{url}"' in page
    assert browser.get(url).status_code == 405
    resp = browser.post(url, follow=True)
    assert resp.redirect_chain[-1][0] == f"/catalog/datasource/{source.pk}/change/"
    source.refresh_from_db()
    assert source.status == "ok" and source.last_checked_at is not None
