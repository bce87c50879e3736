"""Uploads into a files data source (admin page and API): a dataset and its first version in one step.

The file is streamed to disk with the size limit and sha256; its first record proves the format; the name
goes through the path guards; nothing is overwritten; any refusal names the field and leaves no file and
no row behind.
"""

import hashlib
import io
import json
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from catalog import services
from catalog.models import Dataset, DatasetVersion

from .factories import ProjectFactory

pytestmark = pytest.mark.django_db

RECORDS = [{"id": i, "text": f"row {i}, with a comma", "score": i / 2} for i in range(120)]


def _jsonl(records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def _csv(records) -> bytes:
    lines = ["id,text,score"] + [f'{r["id"]},"{r["text"]}",{r["score"]}' for r in records]
    return ("\n".join(lines) + "\n").encode()


def _parquet(records) -> bytes:
    out = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records), out)
    return out.getvalue()


@pytest.fixture
def source(file_root):
    root = file_root / f"up-{uuid.uuid4().hex[:8]}"
    root.mkdir(parents=True)
    return services.datasource_create(
        actor=None, project=ProjectFactory(), name="landing", kind="file", config={"root": str(root)}
    )


@pytest.fixture
def api(admin_user):
    client = APIClient()
    client.force_authenticate(admin_user)
    return client


def _upload(api, source, data: bytes, filename: str, name="uploaded", **extra):
    body = {"name": name, **extra, "file": SimpleUploadedFile(filename, data)}
    return api.post(f"/api/v1/catalog/data-sources/{source.pk}/upload/", body, format="multipart")


def _leftovers(source):
    from pathlib import Path

    return sorted(str(p.relative_to(source.config["root"])) for p in Path(source.config["root"]).rglob("*"))


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_an_upload_becomes_a_dataset_with_its_first_version(api, source, fmt):
    data = {"jsonl": _jsonl, "csv": _csv, "parquet": _parquet}[fmt](RECORDS)
    resp = _upload(api, source, data, f"orders.{fmt}", location=f"raw/orders.{fmt}")
    assert resp.status_code == 201, resp.content
    body = resp.json()
    assert body["version"]["checksum"] == hashlib.sha256(data).hexdigest()
    assert body["version"]["record_count"] == len(RECORDS) and body["version"]["size_bytes"] == len(data)
    assert body["version"]["version"] == 1 and body["version"]["status"] == "published"
    dataset = Dataset.objects.get(pk=body["dataset"]["id"])
    assert (dataset.format, dataset.location, dataset.row_count) == (fmt, f"raw/orders.{fmt}", len(RECORDS))
    assert _leftovers(source) == ["raw", f"raw/orders.{fmt}"]  # no temp file left
    preview = services.dataset_preview(dataset=dataset, limit=3)
    assert [r["id"] for r in preview] in ([0, 1, 2], ["0", "1", "2"])


def test_a_large_upload_is_streamed_through_a_temp_file_in_chunks(api, source, settings):
    records = [{"id": i, "pad": "x" * 500} for i in range(12_000)]  # ~6 MB: above the in-memory upload size
    data = _jsonl(records)
    assert len(data) > settings.FILE_UPLOAD_MAX_MEMORY_SIZE
    resp = _upload(api, source, data, "big.jsonl")
    assert resp.status_code == 201, resp.content
    assert resp.json()["version"]["checksum"] == hashlib.sha256(data).hexdigest()
    assert resp.json()["version"]["record_count"] == 12_000


@pytest.mark.parametrize("cut_while_streaming", [False, True], ids=["service-limit", "handler-limit"])
def test_a_file_over_the_limit_is_refused_naming_it_and_nothing_is_written(api, source, settings, cut_while_streaming):
    settings.DATASET_UPLOAD_MAX_BYTES = 4000
    if cut_while_streaming:
        settings.MAX_UPLOAD_BYTES = 4000  # the upload handler's cap is the larger of the two
    resp = _upload(api, source, _jsonl(RECORDS), "big.jsonl")
    assert resp.status_code == 400, resp.content
    assert "4,000" in resp.json()["error"]["fields"]["file"][0]
    assert _leftovers(source) == [] and not Dataset.objects.filter(name="uploaded").exists()


@pytest.mark.parametrize(
    ("data", "filename", "says"),
    [
        (_jsonl(RECORDS), "looks.csv", "JSONL, not CSV"),
        (b"this is not json\n", "bad.jsonl", "not valid JSONL"),
        (b"[1, 2, 3]\n", "array.jsonl", "not valid JSONL"),
        (_csv(RECORDS), "fake.parquet", "not valid PARQUET"),
        (_parquet(RECORDS), "real.csv", "Parquet, not CSV"),
        (b"\xff\xfe\x00\x01binary", "bin.csv", "not UTF-8"),
        (b"\n\n", "blank.jsonl", "no record"),
    ],
)
def test_a_file_in_the_wrong_format_is_refused_by_its_first_record(api, source, data, filename, says):
    resp = _upload(api, source, data, filename)
    assert resp.status_code == 400, resp.content
    assert says in resp.json()["error"]["fields"]["file"][0]
    assert _leftovers(source) == [] and not Dataset.objects.filter(name="uploaded").exists()


@pytest.mark.parametrize(
    "location",
    ["../escape.jsonl", "raw/../../escape.jsonl", "/etc/escape.jsonl", ".hidden.jsonl", "raw/.x/a.jsonl", "x.txt",
     "a\\b.jsonl", "raw//a.jsonl"],
)  # fmt: skip
def test_traversal_and_bad_names_are_refused_naming_the_location(api, source, location, file_root):
    resp = _upload(api, source, _jsonl(RECORDS), "ok.jsonl", location=location)
    assert resp.status_code == 400, resp.content
    assert list(resp.json()["error"]["fields"]) == ["location"]
    assert _leftovers(source) == [] and not (file_root / "escape.jsonl").exists()
    assert not Dataset.objects.filter(name="uploaded").exists()


def test_an_existing_file_is_never_replaced(api, source):
    assert _upload(api, source, _jsonl(RECORDS[:5]), "a.jsonl", name="first").status_code == 201
    resp = _upload(api, source, _jsonl(RECORDS), "a.jsonl", name="second")
    assert resp.status_code == 400 and "already exists" in resp.json()["error"]["fields"]["location"][0]
    assert DatasetVersion.objects.get(dataset__name="first").record_count == 5
    assert _leftovers(source) == ["a.jsonl"]


def test_a_taken_dataset_name_is_refused_before_a_byte_is_written(api, source):
    assert _upload(api, source, _jsonl(RECORDS[:5]), "a.jsonl", name="same").status_code == 201
    resp = _upload(api, source, _jsonl(RECORDS), "b.jsonl", name="same")
    assert resp.status_code == 400 and list(resp.json()["error"]["fields"]) == ["name"]
    assert _leftovers(source) == ["a.jsonl"]


def test_only_a_files_source_takes_uploads(api):
    other = services.datasource_create(
        actor=None, project=ProjectFactory(), name="web", kind="http", config={"base_url": "http://127.0.0.1:9/"}
    )
    resp = _upload(api, other, _jsonl(RECORDS), "a.jsonl")
    assert resp.status_code == 400 and list(resp.json()["error"]["fields"]) == ["source"]


def test_a_failed_database_write_removes_the_placed_file(source, monkeypatch):
    def broken(self, *args, **kwargs):
        raise RuntimeError("database gone")

    monkeypatch.setattr(DatasetVersion, "save", broken)
    with pytest.raises(RuntimeError):
        services.dataset_upload(actor=None, source=source, name="x", location="x.jsonl", chunks=iter([_jsonl(RECORDS)]))
    assert _leftovers(source) == [] and not Dataset.objects.filter(name="x").exists()


def test_the_admin_page_uploads_and_shows_the_checksum(client, admin_user, source):
    client.force_login(admin_user)
    page = client.get(f"/catalog/datasource/{source.pk}/change/").content.decode()
    assert f"/catalog/datasource/{source.pk}/upload/" in page
    data = _csv(RECORDS)
    resp = client.post(
        f"/catalog/datasource/{source.pk}/upload/",
        {"name": "from-admin", "location": "", "description": "", "file": SimpleUploadedFile("c.csv", data)},
    )
    assert resp.status_code == 200, resp.content
    html = resp.content.decode()
    assert hashlib.sha256(data).hexdigest() in html and 'id="df-upload-records">120<' in html
    assert Dataset.objects.get(name="from-admin").versions.get().checksum == hashlib.sha256(data).hexdigest()
    resp = client.post(
        f"/catalog/datasource/{source.pk}/upload/",
        {"name": "evil", "location": "../x.csv", "description": "", "file": SimpleUploadedFile("c.csv", data)},
    )
    assert resp.status_code == 400 and "relative path below" in resp.content.decode()
    assert not Dataset.objects.filter(name="evil").exists()
