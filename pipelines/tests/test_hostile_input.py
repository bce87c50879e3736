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


# ---- Unsafe template strings (issue 11): format tricks, unknown placeholders, surrogates, regexes ----
PUBLISH, FILTER = 4, 1  # positions in the factory's read -> filter -> clean -> qc -> publish


def _stage_config(index, **config):
    def mutate(body):
        body["stages"][index]["config"] = {**(body["stages"][index].get("config") or {}), **config}

    return mutate


def _filter_regex(pattern):
    return _stage_config(FILTER, rules=[{"type": "regex", "field": "text", "pattern": pattern}])


def _inference_prompt(template):
    def mutate(body):
        body["stages"].insert(
            FILTER + 1,
            {"id": "annotate", "kind": "model_inference", "config": {"prompt_template": template}},
        )

    return mutate


def _surrogate_key(body):
    body["stages"][FILTER]["config"]["x\ud800"] = 1


LOCATION_PATH = f"$.stages[{PUBLISH}].config.location"
PATTERN_PATH = f"$.stages[{FILTER}].config.rules[0].pattern"
PROMPT_PATH = f"$.stages[{FILTER + 1}].config.prompt_template"
SETTINGS_WALK = "out/{run_id.__init__.__globals__[sys].modules[django.conf].settings.SECRET_KEY}.jsonl"
# (case id, mutation, expected error code, JSON path the error must name)
UNSAFE = [
    ("location-settings-walk", _stage_config(PUBLISH, location=SETTINGS_WALK), "invalid_template", LOCATION_PATH),
    ("location-attribute", _stage_config(PUBLISH, location="{dataset.__class__}"), "invalid_template", LOCATION_PATH),
    ("location-index", _stage_config(PUBLISH, location="{dataset[0]}.jsonl"), "invalid_template", LOCATION_PATH),
    ("location-unknown", _stage_config(PUBLISH, location="out/{secret}.jsonl"), "invalid_template", LOCATION_PATH),
    ("location-positional", _stage_config(PUBLISH, location="out/{0}.jsonl"), "invalid_template", LOCATION_PATH),
    ("location-conversion", _stage_config(PUBLISH, location="{dataset!r}"), "invalid_template", LOCATION_PATH),
    ("location-width", _stage_config(PUBLISH, location="{version:>99999999}"), "invalid_template", LOCATION_PATH),
    ("location-nested", _stage_config(PUBLISH, location="{version:{dataset}}"), "invalid_template", LOCATION_PATH),
    ("location-surrogate", _stage_config(PUBLISH, location="out/\ud800.jsonl"), "surrogate", LOCATION_PATH),
    ("prompt-attribute", _inference_prompt("{text.__class__.__mro__}"), "invalid_template", PROMPT_PATH),
    ("prompt-index", _inference_prompt("{meta[secret]}"), "invalid_template", PROMPT_PATH),
    ("prompt-width", _inference_prompt("{text:>999999999}"), "invalid_template", PROMPT_PATH),
    ("prompt-conversion", _inference_prompt("{text!r}"), "invalid_template", PROMPT_PATH),
    ("name-surrogate", lambda b: b.update(name="a\udc00b"), "surrogate", "$.name"),
    ("description-surrogate", lambda b: b.update(description="\ud800"), "surrogate", "$.description"),
    ("pattern-surrogate", _filter_regex("x\ud800"), "surrogate", PATTERN_PATH),
    ("key-surrogate", _surrogate_key, "surrogate", f"$.stages[{FILTER}].config"),
    ("regex-backreference", _filter_regex(r"(a)\1"), "invalid_template", PATTERN_PATH),
    ("regex-lookahead", _filter_regex("(?=admin)"), "invalid_template", PATTERN_PATH),
    ("regex-lookbehind", _filter_regex("(?<!x)y"), "invalid_template", PATTERN_PATH),
    ("regex-huge-repeat", _filter_regex("(a{1000}){1000}"), "invalid_template", PATTERN_PATH),
    ("regex-syntax", _filter_regex("[unclosed"), "invalid_template", PATTERN_PATH),
]
UNSAFE_IDS = [c[0] for c in UNSAFE]


def _unsafe_body(pipeline, mutate) -> bytes:
    # json.dumps escapes a lone surrogate as \ud800, exactly what a hostile file would carry.
    raw = _with(pipeline, mutate)
    assert raw.isascii()
    return raw


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
    *[(case, lambda p, m=mutate: _unsafe_body(p, m), 400, code, path) for case, mutate, code, path in UNSAFE],
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


@pytest.mark.parametrize(("case", "mutate", "code", "path"), UNSAFE, ids=UNSAFE_IDS)
def test_every_door_names_the_json_path_of_an_unsafe_string(
    client, admin_user, target, tmp_path, case, mutate, code, path
):
    """The API (fields), the admin page and the command each say where the unsafe string is."""
    client.force_login(admin_user)
    raw = _unsafe_body(target, mutate)
    before = _counts()
    response = client.post("/api/v1/pipelines/templates/import/", raw, content_type="application/json")
    assert response.status_code == 400 and response.json()["error"]["code"] == code
    assert path in (response.json()["error"].get("fields") or {}), response.json()
    upload = io.BytesIO(raw)
    upload.name = "t.json"
    page = client.post(reverse("admin:pipelines_pipeline_import"), {"file": upload})
    assert page.status_code == 400 and path in page.content.decode()
    file = tmp_path / "t.json"
    file.write_bytes(raw)
    with pytest.raises(CommandError) as excinfo:
        call_command("import_template", str(file), stdout=io.StringIO())
    assert path in str(excinfo.value)
    assert _counts() == before


def test_the_command_exits_1_without_a_traceback_on_a_surrogate(tmp_path, target, capsys, monkeypatch):
    """As manage.py runs it (run_from_argv): exit status 1 and the JSON path on stderr, no traceback."""
    from django.db import connections

    from pipelines.management.commands.import_template import Command

    # run_from_argv closes every connection on exit; the test's transaction must outlive it.
    monkeypatch.setattr(connections, "close_all", lambda: None)

    file = tmp_path / "t.json"
    file.write_bytes(_unsafe_body(target, lambda b: b.update(description="\ud800")))
    before = _counts()
    with pytest.raises(SystemExit) as exit_info:
        Command().run_from_argv(["manage.py", "import_template", "--skip-checks", str(file)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "$.description" in err and "surrogate" in err and "Traceback" not in err
    assert _counts() == before
