"""Module versions: upload through the service, the API and the admin; validated, immutable, audited."""

from __future__ import annotations

import hashlib

import pytest
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from dataflare_portal.core.models import AuditLogEntry
from pipelines.stagekinds import StageConfigError, registry
from wasmstages.models import WasmModule
from wasmstages.services import wasm_module_upload

from . import modules

pytestmark = pytest.mark.django_db


def test_it_stores_versions_with_sha256_and_size_counting_from_one():
    echo, verdicts = modules.binary(modules.ECHO), modules.binary(modules.VERDICTS)
    first = wasm_module_upload(name="tidy", content=echo, actor=None)
    second = wasm_module_upload(name="tidy", content=verdicts, actor=None)
    other = wasm_module_upload(name="other", content=echo, actor=None)
    assert (first.version, second.version, other.version) == (1, 2, 1)
    assert first.sha256 == hashlib.sha256(echo).hexdigest() and first.size == len(echo)
    assert bytes(WasmModule.objects.get(pk=second.pk).content) == verdicts
    assert set(first.exports) == {"memory", "alloc", "process"} and first.imports == []
    assert AuditLogEntry.objects.filter(object_repr="tidy@2").exists()


def test_a_stored_version_cannot_be_changed():
    row = wasm_module_upload(name="tidy", content=modules.binary(modules.ECHO), actor=None)
    row.content = modules.binary(modules.VERDICTS)
    with pytest.raises(ValueError, match="immutable"):
        row.save()
    row = WasmModule.objects.get(pk=row.pk)
    row.description = "a note may change"
    row.save()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty"),
        (b"\x00asm\x01\x00\x00\x00garbage", "not a WebAssembly module"),
        (b"not wasm at all", "not a WebAssembly module"),
        (modules.binary(modules.FORBIDDEN_IMPORT), "wasi_snapshot_preview1.path_open"),
        (modules.binary(modules.NO_PROCESS), "process(i32, i32) -> i64"),
    ],
)
def test_it_refuses_modules_that_do_not_compile_or_follow_the_abi(content, expected):
    with pytest.raises(ValidationError) as err:
        wasm_module_upload(name="bad", content=content, actor=None)
    assert expected in " ".join(err.value.message_dict["content"])
    assert not WasmModule.objects.exists()


def test_uploading_the_latest_bytes_again_is_refused():
    content = modules.binary(modules.ECHO)
    wasm_module_upload(name="tidy", content=content, actor=None)
    with pytest.raises(ValidationError, match="already tidy@1"):
        wasm_module_upload(name="tidy", content=content, actor=None)


def test_the_api_uploads_lists_and_refuses_with_the_field(local_auth, admin_user, viewer_user):
    client = APIClient()
    client.force_authenticate(admin_user)
    upload = SimpleUploadedFile("tidy.wasm", modules.binary(modules.ECHO), "application/wasm")
    answer = client.post("/api/v1/wasm/modules/", {"name": "tidy", "file": upload}, format="multipart")
    assert answer.status_code == 201, answer.content
    assert answer.json()["version"] == 1 and answer.json()["sha256"] == WasmModule.objects.get().sha256
    bad = SimpleUploadedFile("x.wasm", modules.binary(modules.FORBIDDEN_IMPORT), "application/wasm")
    refused = client.post("/api/v1/wasm/modules/", {"name": "tidy", "file": bad}, format="multipart")
    assert refused.status_code == 400
    assert "path_open" in str(refused.json())
    assert "file" in str(refused.json())
    listed = client.get("/api/v1/wasm/modules/?name=tidy").json()
    rows = listed["results"] if isinstance(listed, dict) else listed
    assert [r["version"] for r in rows] == [1] and "content" not in rows[0]
    client.force_authenticate(viewer_user)
    upload = SimpleUploadedFile("v.wasm", modules.binary(modules.VERDICTS), "application/wasm")
    assert client.post("/api/v1/wasm/modules/", {"name": "tidy", "file": upload}, format="multipart").status_code == 403
    assert client.delete(f"/api/v1/wasm/modules/{rows[0]['id']}/").status_code in (403, 405)


def test_the_admin_uploads_a_version_and_shows_abi_errors_on_the_file(client, admin_user):
    client.force_login(admin_user)
    url = "/wasmstages/wasmmodule/add/"
    assert client.get(url).status_code == 200
    bad = SimpleUploadedFile("x.wasm", modules.binary(modules.FORBIDDEN_IMPORT))
    page = client.post(url, {"name": "tidy", "description": "", "file": bad})
    assert page.status_code == 200 and "path_open" in page.content.decode()
    assert not WasmModule.objects.exists()
    good = SimpleUploadedFile("tidy.wasm", modules.binary(modules.ECHO))
    done = client.post(url, {"name": "tidy", "description": "first", "file": good})
    assert done.status_code == 302, done.content.decode()[:2000]
    row = WasmModule.objects.get()
    assert (row.label, row.description) == ("tidy@1", "first")
    assert client.get(f"/wasmstages/wasmmodule/{row.pk}/change/").status_code == 200


def test_the_stage_config_names_an_uploaded_module_and_version():
    kind = registry.get("wasm")
    wasm_module_upload(name="tidy", content=modules.binary(modules.ECHO), actor=None)
    kind.validate_config({"module": "tidy"})
    kind.validate_config({"module": "tidy", "version": 1, "limits": {"fuel": 10_000_000}})
    with pytest.raises(StageConfigError) as err:
        kind.validate_config({"module": "nope"})
    assert err.value.path == "$.module"
    with pytest.raises(StageConfigError) as err:
        kind.validate_config({"module": "tidy", "version": 2})
    assert err.value.path == "$.version"
    with pytest.raises(StageConfigError) as err:
        kind.validate_config({"module": "tidy", "capabilities": ["wasi"]})
    assert err.value.path == "$.capabilities[0]"
    with pytest.raises(StageConfigError) as err:
        kind.validate_config({"module": "tidy", "limits": {"memory_pages": 10**9}})
    assert err.value.path == "$.limits.memory_pages"
