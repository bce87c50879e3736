"""Template export/import, immutable versions, diff, the commands, the API and the admin pages."""

import io
import json

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from dataflare_portal.core.models import AuditLogEntry
from pipelines.models import Pipeline, PipelineStage, PipelineTemplate, QCPolicy
from pipelines.services import stage_save, template_export, template_import_text
from pipelines.templates_io import template_checksum, template_diff, template_export_body, template_import

from .factories import PipelineFactory

pytestmark = pytest.mark.django_db


def _wipe_pipeline(pipeline):
    """Remove the pipeline and its template versions, keeping datasets: a 'fresh' target for import."""
    PipelineTemplate.objects.all().delete()
    pipeline.delete()
    QCPolicy.objects.all().delete()


def test_it_round_trips_export_import_to_an_equal_pipeline(admin_user):
    pipeline = PipelineFactory()
    body, template = template_export(pipeline=pipeline, actor=admin_user)
    assert body["schema_version"] == 1 and [s["id"] for s in body["stages"]] == [
        "read",
        "filter",
        "clean",
        "qc",
        "publish",
    ]
    _wipe_pipeline(pipeline)
    plan = template_import_text(raw=json.dumps(body).encode(), actor=admin_user)
    again = template_export_body(plan.pipeline)
    assert again == body
    assert template_checksum(again) == template.checksum
    assert plan.pipeline.qc_policy.name == body["qc_policy"]["name"]
    assert plan.pipeline.template.version == 1


def test_run_parameters_travel_with_the_template(admin_user):
    pipeline = PipelineFactory()
    _plain, v1 = template_export(pipeline=pipeline, actor=admin_user)
    assert "parameters_schema" not in v1.body  # no parameters: the body (and checksum) of before
    schema = {"type": "object", "properties": {"lang": {"type": "string", "default": "en"}}, "required": ["lang"]}
    pipeline.parameters_schema = schema
    pipeline.save()
    body, v2 = template_export(pipeline=pipeline, actor=admin_user)
    assert body["parameters_schema"] == schema and v2.version == v1.version + 1
    _wipe_pipeline(pipeline)
    plan = template_import_text(raw=json.dumps(body).encode(), actor=admin_user)
    assert plan.pipeline.parameters_schema == schema
    assert template_export_body(plan.pipeline) == body


def test_an_invalid_parameters_schema_is_refused_at_its_json_path(admin_user):
    from pipelines.validation import TemplateValidationFailed

    pipeline = PipelineFactory()
    body, _template = template_export(pipeline=pipeline, actor=admin_user)
    body["parameters_schema"] = {"type": "object", "properties": {"n": {"type": "integer", "default": "x"}}}
    _wipe_pipeline(pipeline)
    with pytest.raises(TemplateValidationFailed) as caught:
        template_import_text(raw=json.dumps(body).encode(), actor=admin_user)
    paths = [e["path"] for e in caught.value.report.to_dict()["errors"]]
    assert "$.parameters_schema.properties.n.default" in paths
    assert not Pipeline.objects.filter(name=body["name"]).exists()


def test_it_makes_a_new_version_only_when_the_body_changes(admin_user):
    pipeline = PipelineFactory()
    _body, v1 = template_export(pipeline=pipeline, actor=admin_user)
    _body, same = template_export(pipeline=pipeline, actor=admin_user)
    assert same.pk == v1.pk and PipelineTemplate.objects.filter(name=pipeline.name).count() == 1
    stage = pipeline.stages.get(key="filter")
    stage.config = {"rules": [{"type": "length", "field": "text", "min": 20}]}
    stage_save(actor=admin_user, stage=stage)
    pipeline.refresh_from_db()
    assert pipeline.template.version == 2
    assert PipelineTemplate.objects.get(pk=v1.pk).body["stages"][1]["config"]["rules"][0]["min"] == 8  # immutable


def test_it_diffs_stages_added_removed_reordered_and_config_paths():
    before = {
        "schema_version": 1,
        "name": "p",
        "batch_size": 100,
        "stages": [
            {"id": "read", "kind": "read", "config": {}},
            {"id": "filter", "kind": "filter", "config": {"rules": [{"type": "length", "min": 8}]}},
            {"id": "clean", "kind": "clean", "config": {"steps": [{"op": "strip_html"}]}},
            {"id": "dedup", "kind": "dedup", "config": {}},
        ],
    }
    after = {
        "schema_version": 1,
        "name": "p",
        "batch_size": 200,
        "stages": [
            {"id": "read", "kind": "read", "config": {}},
            {"id": "clean", "kind": "clean", "config": {"steps": [{"op": "strip_html"}]}},
            {"id": "filter", "kind": "filter", "config": {"rules": [{"type": "length", "min": 12}]}},
            {"id": "publish", "kind": "publish", "config": {}},
        ],
    }
    diff = template_diff(before, after)
    assert [s["id"] for s in diff["stages_added"]] == ["publish"]
    assert [s["id"] for s in diff["stages_removed"]] == ["dedup"]
    assert diff["reordered"] is True
    paths = {c["path"]: c for c in diff["changes"]}
    assert paths["$.stages[filter].config.rules[0].min"]["before"] == 8
    assert paths["$.stages[filter].config.rules[0].min"]["after"] == 12
    assert paths["$.batch_size"]["after"] == 200
    assert template_diff(before, before)["identical"] is True


def test_it_dry_runs_an_import_without_writing(admin_user):
    pipeline = PipelineFactory()
    body = template_export_body(pipeline)
    body["name"] = "brand-new"
    counts = (Pipeline.objects.count(), PipelineStage.objects.count(), PipelineTemplate.objects.count())
    audits = AuditLogEntry.objects.count()
    plan = template_import(body=body, actor=admin_user, dry_run=True)
    assert plan.dry_run and ("create", "pipeline", "brand-new") in [
        (a["action"], a["object"], a["name"]) for a in plan.actions
    ]
    assert (Pipeline.objects.count(), PipelineStage.objects.count(), PipelineTemplate.objects.count()) == counts
    assert AuditLogEntry.objects.count() == audits


def test_commands_export_then_import_into_another_project(admin_user, tmp_path):
    pipeline = PipelineFactory()
    out = tmp_path / "t.json"
    call_command("export_template", pipeline.name, "-o", str(out))
    body = json.loads(out.read_text())
    assert body["name"] == pipeline.name
    _wipe_pipeline(pipeline)
    stdout = io.StringIO()
    call_command("import_template", str(out), "--dry-run", stdout=stdout)
    assert "would create pipeline" in stdout.getvalue() and not Pipeline.objects.filter(name=body["name"]).exists()
    call_command("import_template", str(out), stdout=io.StringIO())
    assert Pipeline.objects.get(name=body["name"]).stages.count() == 5


def test_api_export_import_versions_and_diff(client, admin_user):
    pipeline = PipelineFactory()
    client.force_login(admin_user)
    exported = client.get(f"/api/v1/pipelines/pipelines/{pipeline.pk}/export/")
    assert exported.status_code == 200
    body = exported.json()
    body["name"] = "copy"
    body["stages"][1]["config"]["rules"][0]["min"] = 30
    dry = client.post(
        "/api/v1/pipelines/templates/import/?dry_run=1", json.dumps(body), content_type="application/json"
    )
    assert (
        dry.status_code == 200 and dry.json()["dry_run"] is True and not Pipeline.objects.filter(name="copy").exists()
    )
    real = client.post("/api/v1/pipelines/templates/import/", json.dumps(body), content_type="application/json")
    assert real.status_code == 201, real.content
    copy = Pipeline.objects.get(name="copy")
    body["stages"][1]["config"]["rules"][0]["min"] = 40
    client.post("/api/v1/pipelines/templates/import/", json.dumps(body), content_type="application/json")
    copy.refresh_from_db()
    v1, v2 = PipelineTemplate.objects.filter(name="copy").order_by("version")
    assert copy.template_id == v2.pk
    diff = client.get(f"/api/v1/pipelines/templates/{v2.pk}/diff/?against={v1.pk}").json()["diff"]
    assert diff["changes"][0]["path"] == "$.stages[filter].config.rules[0].min"
    versions = client.get(f"/api/v1/pipelines/templates/{v2.pk}/versions/").json()
    assert [v["version"] for v in versions] == [2, 1] and versions[0]["stats"]["runs"] == 0
    assert client.get("/api/v1/pipelines/templates/schema/").json()["properties"]["schema_version"]["const"] == 1
    bad = client.get(f"/api/v1/pipelines/templates/{v2.pk}/diff/?against=999999")
    assert bad.status_code == 400 and bad.json()["error"]["fields"]["against"]


def test_api_validate_action_names_stage_and_path(client, admin_user):
    pipeline = PipelineFactory()
    PipelineStage.objects.filter(pipeline=pipeline, key="filter").update(
        config={"rules": [{"type": "length", "min": "x"}]}
    )
    client.force_login(admin_user)
    report = client.post(f"/api/v1/pipelines/pipelines/{pipeline.pk}/validate/").json()
    assert report["ok"] is False
    assert report["errors"][0]["stage"] == "filter"
    assert report["errors"][0]["path"].startswith("$.stages[1].config.rules[0]")


def test_admin_import_upload_dry_run_and_export_action(client, admin_user):
    pipeline = PipelineFactory()
    client.force_login(admin_user)
    body = template_export_body(pipeline)
    body["name"] = "uploaded"
    url = reverse("admin:pipelines_pipeline_import")
    upload = io.BytesIO(json.dumps(body).encode())
    upload.name = "t.json"
    page = client.post(url, {"file": upload, "dry_run": "on"})
    assert page.status_code == 200 and b"df-import-plan" in page.content
    assert not Pipeline.objects.filter(name="uploaded").exists()
    upload = io.BytesIO(json.dumps(body).encode())
    upload.name = "t.json"
    done = client.post(url, {"file": upload})
    assert done.status_code == 302 and Pipeline.objects.filter(name="uploaded").exists()
    export = client.post(
        reverse("admin:pipelines_pipeline_changelist"),
        {"action": "export_templates", "_selected_action": [pipeline.pk]},
    )
    assert export.status_code == 200 and json.loads(export.content)["name"] == pipeline.name
    validate = client.post(
        reverse("admin:pipelines_pipeline_changelist"),
        {"action": "validate_pipelines", "_selected_action": [pipeline.pk]},
        follow=True,
    )
    assert b"valid" in validate.content


def test_diff_page_shows_changes_and_runs_of_each_version(client, admin_user):
    pipeline = PipelineFactory()
    _body, v1 = template_export(pipeline=pipeline, actor=admin_user)
    stage = pipeline.stages.get(key="filter")
    stage.config = {"rules": [{"type": "length", "field": "text", "min": 99}]}
    stage_save(actor=admin_user, stage=stage)
    client.force_login(admin_user)
    page = client.get(reverse("pipelines:template-versions", args=[pipeline.name]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "$.stages[filter].config.rules[0].min" in html and "Runs of v1" in html and "Runs of v2" in html
    assert client.get(reverse("pipelines:template-versions", args=["nope"])).status_code == 404


def test_export_command_writes_a_stored_version_and_refuses_unknown_ones(admin_user):
    pipeline = PipelineFactory()
    template_export(pipeline=pipeline, actor=admin_user)
    out = io.StringIO()
    call_command("export_template", pipeline.name, "--template-version", "1", stdout=out)
    assert json.loads(out.getvalue())["name"] == pipeline.name
    with pytest.raises(CommandError):
        call_command("export_template", pipeline.name, "--template-version", "9", stdout=io.StringIO())
    with pytest.raises(CommandError):
        call_command("export_template", "no-such-pipeline", stdout=io.StringIO())


def test_api_validate_body_and_import_into_a_named_project(client, admin_user):
    from catalog.tests.factories import ProjectFactory

    pipeline = PipelineFactory()
    client.force_login(admin_user)
    body = template_export_body(pipeline)
    body["stages"][1]["kind"] = "nope"
    report = client.post("/api/v1/pipelines/templates/validate/", json.dumps(body), content_type="application/json")
    assert report.status_code == 200 and report.json()["errors"][0]["code"] == "unknown_kind"
    body = template_export_body(pipeline)
    target = ProjectFactory(slug="target")
    done = client.post(
        "/api/v1/pipelines/templates/import/?project=target", json.dumps(body), content_type="application/json"
    )
    assert done.status_code == 201 and Pipeline.objects.get(pk=done.json()["pipeline"]).project == target
    missing = client.post(
        "/api/v1/pipelines/templates/import/?project=ghost", json.dumps(body), content_type="application/json"
    )
    assert missing.status_code == 400 and missing.json()["error"]["fields"]["project"]
