"""The hostile-input corpus: every case is a clear 400/413 naming the problem, with nothing written, never a 500.

Each case goes through the three doors a template can come in by: the API import endpoint, the
admin upload form and the import_template command.
"""

import io
import json

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from catalog.models import Project
from dataflare_portal.core.models import AuditLogEntry
from pipelines.models import Pipeline, PipelineStage, PipelineTemplate, QCPolicy

from .factories import PipelineFactory

pytestmark = pytest.mark.django_db

SMALL_LIMIT = 65536


def _good(pipeline) -> dict:
    from pipelines.templates_io import template_export_body

    body = template_export_body(pipeline)
    body["name"] = "hostile-target"
    return body


def _with(pipeline, mutate) -> bytes:
    body = _good(pipeline)
    mutate(body)
    return json.dumps(body).encode()


def _stage_kind(body):
    body["stages"][1]["kind"] = "no-such-kind"


def _dup_ids(body):
    body["stages"][2]["id"] = body["stages"][1]["id"]


def _future(body):
    body["schema_version"] = 99


def _stages_string(body):
    body["stages"] = "read,publish"


def _batch_size_string(body):
    body["batch_size"] = "lots"


def _bad_rules(body):
    body["stages"][1]["config"] = {"rules": "length>8"}


def _unknown_dataset(body):
    body["input_dataset"] = {"project": "nowhere", "name": "ghost"}


def _unknown_model_config(body):
    body["stages"][1]["model_config"] = "ghost-model"


def _bad_stage_id(body):
    body["stages"][0]["id"] = "../etc"


# (case id, body builder(pipeline) -> bytes, expected status, expected error code, words the message must contain)
CORPUS = [
    ("truncated", lambda p: json.dumps(_good(p)).encode()[:57], 400, "invalid_json", "Invalid JSON"),
    ("not-json", lambda p: b"{schema_version: 1, name: x}", 400, "invalid_json", "Invalid JSON"),
    ("empty", lambda p: b"   ", 400, "empty", "empty"),
    (
        "over-limit",
        lambda p: b'{"schema_version": 1, "name": "' + b"x" * (SMALL_LIMIT * 2) + b'"}',
        413,
        "too_large",
        "limit",
    ),
    ("deep-arrays", lambda p: b"[" * 30_000 + b"]" * 30_000, 400, "too_deep", "nested"),
    ("deep-objects", lambda p: b'{"a":' * 3000 + b"1" + b"}" * 3000, 400, "too_deep", "nested"),
    ("deep-truncated", lambda p: b"[" * 2000, 400, "too_deep", "nested"),
    ("huge-keys", lambda p: json.dumps({f"k{i}": i for i in range(1500)}).encode(), 400, "too_many_keys", "keys"),
    (
        "huge-array",
        lambda p: json.dumps({"schema_version": 1, "name": "x", "stages": [0] * 12000}).encode(),
        400,
        "too_many_items",
        "array",
    ),
    ("nul-byte", lambda p: b'{"schema_version": 1, "name": "a\x00b", "stages": []}', 400, "nul_character", "NUL"),
    ("nul-escape", lambda p: _with(p, lambda b: b.update(name="a\u0000b")), 400, "nul_character", "NUL"),
    ("bad-utf8", lambda p: b'{"schema_version": 1, "name": "\xff\xfe"}', 400, "invalid_encoding", "UTF-8"),
    (
        "nan",
        lambda p: b'{"schema_version": 1, "name": "x", "batch_size": NaN, "stages": []}',
        400,
        "invalid_json",
        "NaN",
    ),
    (
        "huge-int",
        lambda p: b'{"schema_version": 1, "batch_size": ' + b"9" * 6000 + b"}",
        400,
        "invalid_json",
        "Invalid",
    ),
    (
        "duplicate-key",
        lambda p: b'{"schema_version": 1, "name": "a", "name": "b", "stages": []}',
        400,
        "duplicate_key",
        "name",
    ),
    ("top-level-array", lambda p: b"[1, 2, 3]", 400, "wrong_type", "object"),
    ("missing-version", lambda p: b'{"name": "x", "stages": []}', 400, "schema_version", "schema_version"),
    ("version-string", lambda p: _with(p, lambda b: b.update(schema_version="1")), 400, "wrong_type", "schema_version"),
    ("future-version", lambda p: _with(p, _future), 400, "unsupported_schema_version", "99"),
    ("stages-string", lambda p: _with(p, _stages_string), 400, "wrong_type", "$.stages"),
    ("batch-size-string", lambda p: _with(p, _batch_size_string), 400, "wrong_type", "$.batch_size"),
    ("unknown-field", lambda p: _with(p, lambda b: b.update(extra=1)), 400, "wrong_type", "extra"),
    ("bad-stage-id", lambda p: _with(p, _bad_stage_id), 400, "wrong_type", "$.stages[0].id"),
    ("unknown-kind", lambda p: _with(p, _stage_kind), 400, "invalid_template", "no-such-kind"),
    ("duplicate-stage-ids", lambda p: _with(p, _dup_ids), 400, "invalid_template", "Duplicate stage id"),
    ("bad-config-type", lambda p: _with(p, _bad_rules), 400, "invalid_template", "$.stages[1].config"),
    ("unknown-dataset", lambda p: _with(p, _unknown_dataset), 400, "invalid_template", "nowhere/ghost"),
    ("unknown-model-config", lambda p: _with(p, _unknown_model_config), 400, "invalid_template", "ghost-model"),
]
IDS = [c[0] for c in CORPUS]


@pytest.fixture
def target(settings):
    settings.MAX_UPLOAD_BYTES = SMALL_LIMIT
    return PipelineFactory()


def _counts():
    return (
        Pipeline.objects.count(),
        PipelineStage.objects.count(),
        PipelineTemplate.objects.count(),
        QCPolicy.objects.count(),
        Project.objects.count(),
        AuditLogEntry.objects.count(),
    )


@pytest.mark.parametrize(("case", "build", "status", "code", "words"), CORPUS, ids=IDS)
@pytest.mark.parametrize("dry_run", [False, True], ids=["import", "dry-run"])
def test_api_import_refuses_hostile_input(client, admin_user, target, case, build, status, code, words, dry_run):
    client.force_login(admin_user)
    before = _counts()
    url = "/api/v1/pipelines/templates/import/" + ("?dry_run=1" if dry_run else "")
    response = client.post(url, build(target), content_type="application/json")
    assert response.status_code == status, response.content[:500]
    error = response.json()["error"]
    assert error["status"] == status and error["code"] == code
    assert words in error["message"] + json.dumps(error.get("fields") or {})
    assert "request_id" in response.json()
    assert _counts() == before


@pytest.mark.parametrize(("case", "build", "status", "code", "words"), CORPUS, ids=IDS)
def test_admin_upload_refuses_hostile_input(client, admin_user, target, case, build, status, code, words):
    client.force_login(admin_user)
    before = _counts()
    upload = io.BytesIO(build(target))
    upload.name = "template.json"
    response = client.post(reverse("admin:pipelines_pipeline_import"), {"file": upload})
    assert response.status_code == 400
    assert code.encode() in response.content
    assert _counts() == before


@pytest.mark.parametrize(("case", "build", "status", "code", "words"), CORPUS, ids=IDS)
def test_import_command_refuses_hostile_input(tmp_path, target, case, build, status, code, words):
    path = tmp_path / "template.json"
    path.write_bytes(build(target))
    before = _counts()
    with pytest.raises(CommandError) as excinfo:
        call_command("import_template", str(path), stdout=io.StringIO())
    assert words in str(excinfo.value)
    assert _counts() == before


def test_the_good_body_is_accepted_by_all_three_doors(client, admin_user, target, tmp_path):
    """The corpus is meaningful only if the unmutated body goes through."""
    client.force_login(admin_user)
    raw = json.dumps(_good(target)).encode()
    assert (
        client.post("/api/v1/pipelines/templates/import/?dry_run=1", raw, content_type="application/json").status_code
        == 200
    )
    upload = io.BytesIO(raw)
    upload.name = "t.json"
    assert client.post(reverse("admin:pipelines_pipeline_import"), {"file": upload, "dry_run": "on"}).status_code == 200
    path = tmp_path / "t.json"
    path.write_bytes(raw)
    call_command("import_template", str(path), "--dry-run", stdout=io.StringIO())


def test_content_length_over_limit_is_refused_before_reading(client, admin_user, target):
    client.force_login(admin_user)
    response = client.generic(
        "POST",
        "/api/v1/pipelines/templates/import/",
        b"{}",
        content_type="application/json",
        CONTENT_LENGTH=str(SMALL_LIMIT * 10),
    )
    assert response.status_code == 413 and response.json()["error"]["code"] == "too_large"


def test_viewer_cannot_import(client, viewer_user, local_auth, target):
    client.force_login(viewer_user)
    response = client.post(
        "/api/v1/pipelines/templates/import/", json.dumps(_good(target)), content_type="application/json"
    )
    assert response.status_code == 403 and not Pipeline.objects.filter(name="hostile-target").exists()


@pytest.mark.parametrize(
    "url",
    ["/api/v1/pipelines/pipelines/", "/api/v1/pipelines/stages/", "/api/v1/pipelines/qc-policies/"],
)
def test_crud_endpoints_bound_json_nesting(client, admin_user, target, url):
    """DRF's own JSON parser recurses; these endpoints scan depth first and answer 400, not 500."""
    client.force_login(admin_user)
    before = _counts()
    body = '{"config": ' + "[" * 50_000 + "]" * 50_000 + "}"
    response = client.post(url, body, content_type="application/json")
    assert response.status_code == 400 and "nested" in response.json()["error"]["message"]
    assert _counts() == before
