"""The connector registry: built-ins, a third-party connector installed as a real entry point, broken plug-ins.

The plug-in is the example of docs/connectors.md, taken from the document itself, installed the way pip
installs a package (a module and a `.dist-info` with `entry_points.txt` on sys.path), then used through
the registry, the admin (generated form, save, "Test connection") and the API.
"""

import json
import re
import sys
from pathlib import Path

import pytest
from django.conf import settings

from catalog.connectors import (
    ENTRY_POINT_GROUP,
    Connector,
    ConnectorError,
    DatasetRef,
    connector_kinds,
    connector_registry,
    get_connector,
    get_connector_for_kind,
)
from catalog.connectors.registry import ConnectorRegistry, kind_choices
from catalog.models import DataSource

from .factories import ProjectFactory

DOC = Path(settings.BASE_DIR) / "docs" / "connectors.md"


def _doc_example() -> str:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(r"<!-- example: dataflare_sequence.py -->\n```python\n(.*?)```", text, re.S)
    assert match, "docs/connectors.md lost its plug-in example"
    return match.group(1)


def _install(site: Path, module: str, code: str, entry_points: str, dist: str = "dataflare_sequence") -> None:
    (site / f"{module}.py").write_text(code, encoding="utf-8")
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(entry_points, encoding="utf-8")


@pytest.fixture
def plugin(tmp_path):
    """The docs' example installed as a package with a `dataflare.connectors` entry point (and a broken one)."""
    site = tmp_path / "site"
    site.mkdir()
    _install(site, "dataflare_sequence", _doc_example(),
             f"[{ENTRY_POINT_GROUP}]\nsequence = dataflare_sequence:SequenceConnector\n")  # fmt: skip
    _install(site, "dataflare_broken", "raise ImportError('missing dependency')\n",
             f"[{ENTRY_POINT_GROUP}]\nbroken = dataflare_broken:Connector\n", dist="dataflare_broken")  # fmt: skip
    sys.path.insert(0, str(site))
    connector_registry.reload()
    try:
        yield site
    finally:
        sys.path.remove(str(site))
        for name in ("dataflare_sequence", "dataflare_broken"):
            sys.modules.pop(name, None)
        connector_registry.reload()


def test_builtin_kinds_and_their_capabilities():
    assert connector_kinds()[:4] == ["file", "postgresql", "s3", "mysql"]
    caps = {cls.kind: cls.capabilities() for cls in connector_registry.classes()}
    assert caps["s3"] == {"source": ["csv", "jsonl", "parquet"], "sink": ["csv", "jsonl", "parquet"]}
    assert caps["mysql"] == {"source": ["table", "query"], "sink": ["table"]}
    assert dict(kind_choices())["s3"] == "Object storage (S3-compatible)"


def test_the_installed_plugin_is_a_kind_and_reads(plugin):
    assert "sequence" in connector_kinds() and "broken" not in connector_kinds()
    conn = get_connector_for_kind("sequence", {"count": 7})
    assert conn.config == {"count": 7, "text": "record"}  # the schema's default filled in
    assert conn.test_connection().ok
    chunks = list(conn.read(DatasetRef("all", "jsonl"), batch_size=3))
    assert [len(r) for r, _ in chunks] == [3, 3, 1]
    rest = conn.read(DatasetRef("all", "jsonl"), batch_size=3, start=chunks[0][1])
    assert [r[0]["n"] for r, _ in rest] == [3, 6]
    with pytest.raises(ConnectorError) as err:
        get_connector_for_kind("sequence", {"count": -1})
    assert err.value.field == "count"


def test_a_plugin_cannot_replace_a_builtin_and_bad_classes_are_refused(plugin, monkeypatch):
    from importlib.metadata import EntryPoint

    from catalog.connectors import registry as module

    class Impostor(Connector):
        kind = "file"
        formats = ("jsonl",)

    sys.modules[__name__].Impostor = Impostor
    fake = EntryPoint(name="file", value=f"{__name__}:Impostor", group=ENTRY_POINT_GROUP)
    monkeypatch.setattr(module, "entry_points", lambda group: [fake])
    reg = ConnectorRegistry()
    assert reg.get("file").__module__ == "catalog.connectors.files"

    class NoKind(Connector):
        formats = ("jsonl",)

    class Neither(Connector):
        kind = "neither"

    for bad in (NoKind, Neither, dict):
        with pytest.raises(TypeError):
            reg.register(bad)


@pytest.mark.django_db
def test_the_admin_form_save_and_test_connection_work_for_the_plugin(plugin, client, admin_user):
    client.force_login(admin_user)
    page = client.get("/catalog/datasource/add/").content.decode()
    spec = json.loads(page.split('id="id_config-schema" type="application/json">')[1].split("</script>")[0])
    assert spec["schemas"]["sequence"]["required"] == ["count"]
    assert spec["extras"]["sequence"]["hide"] == ["df-credentials"]  # it takes no credentials
    assert '<option value="sequence">Number sequence (example plug-in)</option>' in page
    form = {"project": ProjectFactory().pk, "name": "numbers", "kind": "sequence", "config": json.dumps({"count": 5})}
    bad = client.post("/catalog/datasource/add/", {**form, "config": json.dumps({"count": "many"})})
    assert bad.status_code == 200 and "$.count" in bad.content.decode()
    resp = client.post("/catalog/datasource/add/", form)
    assert resp.status_code == 302, resp.content.decode()[-2000:]
    source = DataSource.objects.get(name="numbers")
    client.post(f"/catalog/datasource/{source.pk}/test-connection/", follow=True)
    source.refresh_from_db()
    assert source.status == "ok"
    read = get_connector(source).read(DatasetRef("all", "jsonl"))
    assert [r["n"] for chunk, _ in read for r in chunk] == [0, 1, 2, 3, 4]


@pytest.mark.django_db
def test_the_api_creates_and_tests_a_plugin_source(plugin, admin_user):
    from rest_framework.test import APIClient

    api = APIClient()
    api.force_authenticate(admin_user)
    body = {"project": ProjectFactory().pk, "name": "seq", "kind": "sequence", "config": {"count": 2}}
    resp = api.post("/api/v1/catalog/data-sources/", body, format="json")
    assert resp.status_code == 201, resp.content
    tested = api.post(f"/api/v1/catalog/data-sources/{resp.json()['id']}/test/")
    assert tested.status_code == 200 and tested.json()["ok"] is True
    refused = api.post("/api/v1/catalog/data-sources/", {**body, "name": "seq2", "secret": {"password": "x"}},
                       format="json")  # fmt: skip
    assert refused.status_code == 400 and "secret.password" in json.dumps(refused.json())
    assert not DataSource.objects.filter(name="seq2").exists()
