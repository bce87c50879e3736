"""Run parameters: schema checked at save, values validated before a run starts (API 400 / admin form / command
error naming the field), stage configs filled by the safe renderer, parameters recorded on the run."""

import json

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.urls import reverse

from pipelines.parameters import ParameterError, config_resolve, parameters_schema_problems, parameters_validate
from tasks.choices import RunStatus
from tasks.models import Task, TaskRun
from tasks.services import RunRefused, run_start
from tasks.tests import kinds_for_tests
from tasks.tests.factories import STANDARD_STAGES, make_records, published, read_jsonl, reference_output

from .factories import pipeline_for

pytestmark = pytest.mark.django_db

kinds_for_tests.register()

SCHEMA = {
    "type": "object",
    "properties": {
        "min_length": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 8},
        "tag": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 20},
    },
    "required": ["tag"],
    "additionalProperties": False,
}


def parameterized(root, n=200):
    pipeline = pipeline_for(root, name="param", n=n)
    pipeline.parameters_schema = SCHEMA
    pipeline.full_clean()
    pipeline.save()
    f = pipeline.stages.get(key="filter")
    f.config = {"rules": [{"type": "length", "field": "text", "min": {"$param": "min_length"}}]}
    f.full_clean()
    f.save()
    p = pipeline.stages.get(key="publish")
    p.config = {"location": {"$template": "out/param-{tag}.v{{version}}.jsonl"}}
    p.full_clean()
    p.save()
    return pipeline


@pytest.mark.parametrize(
    ("schema", "where"),
    [
        ([], "parameters_schema"),
        ({"type": "array"}, "parameters_schema"),
        ({"type": "object", "properties": {"a": {"type": "nonsense"}}}, "parameters_schema.properties.a.type"),
        ({"type": "object", "properties": {"bad name": {"type": "string"}}}, "parameters_schema.properties.bad name"),
        ({"type": "object", "properties": {"a": {"type": "string", "pattern": "(a+)+\\1"}}}, "pattern"),
        ({"type": "object", "properties": {"a": {"type": "integer", "default": "x"}}}, "properties.a.default"),
    ],
)
def test_a_bad_parameters_schema_is_refused_at_save_naming_the_path(schema, where):
    problems = parameters_schema_problems(schema)
    assert problems and where in next(iter(problems)), problems


def test_values_are_validated_with_the_field_named():
    assert parameters_validate(SCHEMA, {"tag": "abc"}) == {"min_length": 8, "tag": "abc"}
    for values, key in [
        ({}, "parameters.tag"),
        ({"tag": "ABC"}, "parameters.tag"),
        ({"tag": "abc", "min_length": 0}, "parameters.min_length"),
        ({"tag": "abc", "min_length": "7"}, "parameters.min_length"),
        ({"tag": "abc", "extra": 1}, "parameters.extra"),
    ]:
        with pytest.raises(ParameterError) as err:
            parameters_validate(SCHEMA, values)
        assert key in err.value.errors, (values, err.value.errors)
    assert parameters_validate({}, {"x": 1}) == {"x": 1}


def test_the_renderer_never_formats_attribute_access_or_indexing():
    values = {"tag": "a"}
    for text in ["{tag.__class__}", "{tag[0]}", "{0}", "{tag!r}", "{other}"]:
        with pytest.raises(ParameterError):
            config_resolve({"location": {"$template": text}}, values)
    # A value is data: braces inside it are not expanded again.
    assert config_resolve({"x": {"$template": "p-{tag}"}}, {"tag": "{tag}{{"}) == {"x": "p-{tag}{{"}
    assert config_resolve({"n": {"$param": "tag"}, "k": [1, {"$param": "tag"}]}, values) == {"n": "a", "k": [1, "a"]}


def test_a_stage_config_naming_an_undeclared_parameter_is_refused(file_root):
    pipeline = parameterized(file_root)
    stage = pipeline.stages.get(key="filter")
    stage.config = {"rules": [{"type": "length", "field": "text", "min": {"$param": "nope"}}]}
    with pytest.raises(ValidationError) as err:
        stage.full_clean()
    assert "nope" in str(err.value.message_dict["config"])
    # With the default filled in, the kind's own checks still apply.
    stage.config = {"rules": [{"type": "length", "field": {"$param": "min_length"}, "min": 1}]}
    with pytest.raises(ValidationError):
        stage.full_clean()


def test_good_parameters_reach_the_stages_and_are_recorded(doorbell, file_root):
    pipeline = parameterized(file_root, n=300)
    run = run_start(pipeline=pipeline, actor=None, parameters={"tag": "zh", "min_length": 30})
    assert run.parameters == {"tag": "zh", "min_length": 30}
    filt = run.stage_runs.get(key="filter")
    assert filt.config["rules"][0]["min"] == 30
    assert run.stage_runs.get(key="publish").config["location"] == "out/param-zh.v{version}.jsonl"
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    out = published(run)
    stages = [("filter", "filter", {"rules": [{"type": "length", "field": "text", "min": 30}]}), *STANDARD_STAGES[1:]]
    assert out == reference_output(make_records(300), stages)
    assert len(out) < len(reference_output(make_records(300)))
    assert run.output_version.location == "out/param-zh.v1.jsonl"
    assert read_jsonl(file_root / "out" / "param-zh.v1.jsonl") == out
    assert run.output_version.lineage["parameters"] == {"tag": "zh", "min_length": 30}
    # The default applies when a value is not given; fewer records are filtered out.
    second = run_start(pipeline=pipeline, actor=None, parameters={"tag": "en"})
    assert second.stage_runs.get(key="filter").config["rules"][0]["min"] == 8


def test_bad_parameters_never_start_a_run(doorbell, file_root):
    pipeline = parameterized(file_root)
    with pytest.raises(RunRefused) as err:
        run_start(pipeline=pipeline, actor=None, parameters={"tag": "zh", "min_length": -1})
    assert "parameters.min_length" in err.value.message_dict
    assert TaskRun.objects.count() == 0 and Task.objects.count() == 0 and doorbell.sent == []


def test_the_api_answers_a_field_named_400(doorbell, file_root, client):
    pipeline = parameterized(file_root)
    bad = client.post(
        "/api/v1/tasks/runs/",
        {"pipeline": pipeline.pk, "parameters": {"tag": "UPPER"}},
        content_type="application/json",
    )
    assert bad.status_code == 400, bad.content
    assert "parameters.tag" in bad.json()["error"]["fields"]
    missing = client.post("/api/v1/tasks/runs/", {"pipeline": pipeline.pk}, content_type="application/json")
    assert missing.status_code == 400 and "parameters.tag" in missing.json()["error"]["fields"]
    assert TaskRun.objects.count() == 0
    good = client.post(
        "/api/v1/tasks/runs/", {"pipeline": pipeline.pk, "parameters": {"tag": "ok"}}, content_type="application/json"
    )
    assert good.status_code == 201, good.content
    assert good.json()["parameters"] == {"tag": "ok", "min_length": 8}
    schema = client.patch(
        f"/api/v1/pipelines/pipelines/{pipeline.pk}/",
        {"parameters_schema": {"type": "object", "properties": {"x": {"type": "bogus"}}}},
        content_type="application/json",
    )
    assert schema.status_code == 400 and "parameters_schema" in schema.json()["error"]["fields"]


def test_the_command_refuses_bad_parameters_naming_the_field(doorbell, file_root):
    pipeline = parameterized(file_root)
    with pytest.raises(CommandError, match="parameters.min_length"):
        call_command("run_pipeline", str(pipeline.pk), "--parameters", json.dumps({"tag": "a", "min_length": 0}))
    with pytest.raises(CommandError, match="not valid JSON"):
        call_command("run_pipeline", str(pipeline.pk), "--parameters", "{tag:")
    call_command("run_pipeline", str(pipeline.pk), "--parameters", json.dumps({"tag": "cli"}))
    assert TaskRun.objects.get().parameters == {"tag": "cli", "min_length": 8}


def test_the_admin_task_form_names_the_bad_parameter(doorbell, file_root, admin_client):
    pipeline = parameterized(file_root)
    data = {
        "project": pipeline.project_id,
        "pipeline": pipeline.pk,
        "name": "by hand",
        "input_dataset": pipeline.input_dataset_id,
        "parameters": json.dumps({"tag": "x", "min_length": 5000}),
    }
    page = admin_client.post(reverse("admin:tasks_task_add"), data)
    assert page.status_code == 200
    assert "parameters.min_length" in page.content.decode()
    assert Task.objects.count() == 0
    data["parameters"] = json.dumps({"tag": "x"})
    assert admin_client.post(reverse("admin:tasks_task_add"), data).status_code == 302
    task = Task.objects.get()
    page = admin_client.post(
        reverse("admin:tasks_task_changelist"),
        {"action": "run_task_again_action", "_selected_action": [task.pk]},
        follow=True,
    )
    assert page.status_code == 200
    assert TaskRun.objects.get().parameters == {"tag": "x", "min_length": 8}


def test_a_pipeline_without_a_schema_keeps_free_parameters_but_no_stage_can_use_them(doorbell, file_root):
    pipeline = pipeline_for(file_root, name="plain")
    run = run_start(pipeline=pipeline, actor=None, parameters={"note": "x"})
    assert run.parameters == {"note": "x"}
    with pytest.raises(RunRefused) as err:
        run_start(pipeline=pipeline, actor=None, parameters=["not", "an", "object"])
    assert "parameters" in err.value.message_dict
    stage = pipeline.stages.get(key="filter")
    stage.config = {"rules": [{"type": "length", "field": "text", "min": {"$param": "note"}}]}
    with pytest.raises(ValidationError):
        stage.full_clean()
