"""Stages are edited through forms generated from their kind's JSON Schema; raw JSON stays for experts."""

import json
import re

import jsonschema
import pytest

from pipelines.admin import PipelineStageForm, stage_form_schemas
from pipelines.stagekinds import registry
from pipelines.stagekinds.filter import _RULE_SCHEMAS

from .factories import PipelineFactory

pytestmark = pytest.mark.django_db


def _spec(html: str, widget_id: str) -> dict:
    match = re.search(rf'<script id="{re.escape(widget_id)}-schema" type="application/json">(.*?)</script>', html, re.S)
    assert match, f"no schema form for {widget_id}"
    return json.loads(match.group(1))


def test_the_kind_is_a_choice_from_the_registry_and_each_kind_has_its_form(client, admin_user):
    pipeline = PipelineFactory()
    client.force_login(admin_user)
    html = client.get(f"/pipelines/pipeline/{pipeline.pk}/change/").content.decode()
    select = re.search(r'<select name="stages-0-kind"[^>]*>(.*?)</select>', html, re.S).group(1)
    offered = re.findall(r'<option value="([^"]*)"', select)
    assert offered == ["", *registry.names()]
    spec = _spec(html, "id_stages-0-config")
    assert set(spec["schemas"]) == set(registry.names())
    # A filter's rules are a tagged union: every rule type's own fields are in the form's schema.
    rules = spec["schemas"]["filter"]["properties"]["rules"]["items"]
    assert rules["x-discriminator"] == "type" and rules["oneOf"] == list(_RULE_SCHEMAS.values())
    # Reference settings get suggestions (autocomplete), the raw JSON stays in the page.
    assert {d["value"] for d in spec["references"]["dataset"]} >= {pipeline.input_dataset.name}
    assert {p["value"] for p in spec["references"]["policy"]} >= {pipeline.qc_policy.name}
    assert 'name="stages-0-config"' in html and "Edit as raw JSON" in html


def test_the_diagram_shows_the_stages_in_order_with_their_kinds(client, admin_user):
    pipeline = PipelineFactory()
    client.force_login(admin_user)
    html = client.get(f"/pipelines/pipeline/{pipeline.pk}/change/").content.decode()
    diagram = re.search(r'<ol class="df-flow".*?</ol>', html, re.S).group(0)
    # Stage names are data: marked so that translation tools (and the zh check of the browser test) leave them.
    keys = re.findall(r'<span class="df-flow-key" translate="no">([^<]*)</span>', diagram)
    assert keys == [s.name or s.key for s in pipeline.stages.order_by("position")]
    for stage in pipeline.stages.all():
        assert str(registry.get(stage.kind).label) in diagram


VALID_CONFIGS = [
    ("read", {"fields": ["text"], "batch_size": 10}),
    (
        "filter",
        {
            "on_fail": "quarantine",
            "rules": [
                {"type": t, **extra}
                for t, extra in [
                    ("required", {"fields": ["text"]}),
                    ("length", {"field": "text", "min": 1, "max": 9}),
                    ("regex", {"pattern": "a+", "mode": "exclude"}),
                    ("language", {"allow": ["zh", "en"]}),
                    ("range", {"field": "score", "min": 0}),
                ]
            ],
        },
    ),
    ("clean", {"steps": [{"op": "mask_pii", "types": ["email"]}, {"op": "rename", "mapping": {"a": "b"}}]}),
    ("dedup", {"fields": ["text"], "near_duplicate": {"enabled": True, "threshold": 0.8}}),
    ("qc", {"policy": "p", "sample_seed": 3}),
    ("publish", {"dataset": 3, "format": "jsonl", "fields": ["text"]}),
]


@pytest.mark.parametrize("kind,config", VALID_CONFIGS)
def test_every_form_schema_accepts_what_the_kind_accepts(kind, config):
    registry.get(kind).validate_config(config)
    jsonschema.Draft202012Validator(stage_form_schemas()[kind]).validate(config)


def test_a_form_schema_refuses_what_the_kind_refuses():
    bad = {"rules": [{"type": "regex", "field": "text"}]}  # a regex rule needs its pattern
    with pytest.raises(Exception, match="pattern"):
        registry.get("filter").validate_config(bad)
    assert not jsonschema.Draft202012Validator(stage_form_schemas()["filter"]).is_valid(bad)


def test_config_errors_reach_the_form_at_their_json_path():
    pipeline = PipelineFactory()
    data = {
        "position": 9,
        "key": "bad-filter",
        "name": "",
        "kind": "filter",
        "config": json.dumps({"rules": [{"type": "regex", "field": "text", "pattern": "(unclosed"}]}),
    }
    form = PipelineStageForm(data=data, instance=pipeline.stages.model(pipeline=pipeline))
    assert not form.is_valid()
    errors = form.fields["config"].widget.errors
    assert [e["path"] for e in errors] == ["$.rules[0].pattern"], errors
    assert "regular expression" in errors[0]["message"]


def test_an_unknown_kind_is_refused():
    pipeline = PipelineFactory()
    data = {"position": 9, "key": "x", "kind": "no_such_kind", "config": "{}"}
    form = PipelineStageForm(data=data, instance=pipeline.stages.model(pipeline=pipeline))
    assert not form.is_valid() and "kind" in form.errors


def _properties(schema, path="$"):
    """Every (path, property schema) of a form schema, through objects, arrays and tagged unions."""
    for key, sub in (schema.get("properties") or {}).items():
        if "const" in sub:
            continue
        yield f"{path}.{key}", sub
        yield from _properties(sub, f"{path}.{key}")
        items = sub.get("items") or {}
        yield from _properties(items, f"{path}.{key}[]")
        for variant in items.get("oneOf") or []:
            yield from _properties(variant, f"{path}.{key}[{variant.get('title')}]")


def _form_schemas():
    from catalog.admin import connector_schemas
    from pipelines.admin import stage_form_schemas

    yield from (("stage kind " + k, s) for k, s in stage_form_schemas().items())
    yield from (("connector " + k, s) for k, s in connector_schemas().items())


def test_every_setting_of_every_form_has_a_translated_title_and_enum_labels(product_kinds_only):
    """The settings forms are built from these schemas: a property without a title would show its key
    (English), an enum without labels its codes. Codes on purpose (file formats, sslmode) say so."""
    from django.utils.functional import Promise

    missing = []
    for name, schema in _form_schemas():
        for path, sub in _properties(schema):
            if not isinstance(sub.get("title"), Promise):
                missing.append(f"{name} {path}: title")
            if "description" in sub and not isinstance(sub["description"], Promise):
                missing.append(f"{name} {path}: description")
            for enum_owner in (sub, sub.get("items") or {}):
                if "enum" in enum_owner and not enum_owner.get("x-enumCodes"):
                    labels = enum_owner.get("x-enumLabels") or {}
                    if set(labels) != {str(v) for v in enum_owner["enum"]}:
                        missing.append(f"{name} {path}: enum labels")
        items = schema.get("properties") or {}
        for key, sub in items.items():
            for variant in (sub.get("items") or {}).get("oneOf") or []:
                if not isinstance(variant.get("title"), Promise):
                    missing.append(f"{name} $.{key}: a variant without a title")
    assert missing == []


@pytest.mark.parametrize(
    ("kind", "config", "path", "zh"),
    [
        ("read", {"batch_size": "many"}, "$.batch_size", "请输入整数。"),
        ("read", {"batch_size": 0}, "$.batch_size", "不能小于 1。"),
        ("filter", {"on_fail": "shred", "rules": []}, "$.on_fail", '请从以下选项中选择："drop", "quarantine"。'),
    ],
)
def test_a_schema_error_is_said_in_the_reader_language(kind, config, path, zh):
    from django.utils.translation import override

    from pipelines.stagekinds import StageConfigError

    with override("zh-hans"), pytest.raises(StageConfigError) as err:
        registry.get(kind).validate_config(config)
    assert (err.value.path, err.value.message) == (path, zh)


def test_a_connector_setting_error_is_said_in_the_reader_language():
    from django.utils.translation import override

    from catalog.connectors import ConnectorError, validate_config

    with override("zh-hans"), pytest.raises(ConnectorError) as err:
        validate_config("postgresql", {"host": "db.example", "database": "d", "user": "u", "port": 70000})
    assert (err.value.field, err.value.message) == ("port", "port: 不能大于 65535。")
