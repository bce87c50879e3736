"""Validation: errors name the stage and JSON path; order and reference rules; live checks are warnings only."""

import pytest

from conftest import free_port
from modelserver.testing import running_server
from pipelines.models import PipelineStage
from pipelines.templates_io import template_export_body
from pipelines.validation import pipeline_validate, template_validate

from .factories import ModelConfigFactory, PipelineFactory, QCPolicyFactory

pytestmark = pytest.mark.django_db


def _codes(report):
    return [(i.code, i.stage, i.path) for i in report.errors]


def test_a_standard_pipeline_is_valid():
    report = pipeline_validate(PipelineFactory(), probe=False)
    assert report.ok, report.to_dict()


def test_config_errors_name_stage_and_json_path():
    pipeline = PipelineFactory()
    PipelineStage.objects.filter(pipeline=pipeline, key="clean").update(config={"steps": [{"op": "explode"}]})
    report = pipeline_validate(pipeline, probe=False)
    assert report.errors[0].stage == "clean"
    assert report.errors[0].path.startswith("$.stages[2].config.steps[0]")


def test_order_rules():
    body = template_export_body(PipelineFactory())
    stages = body["stages"]
    body["stages"] = [stages[1], stages[0], stages[4], stages[2], stages[3]]  # filter, read, publish, clean, qc
    codes = _codes(template_validate(body, probe=False))
    assert ("order", "read", "$.stages[1].kind") in codes
    assert ("order", "publish", "$.stages[2].kind") in codes
    assert ("qc_before_publish", "publish", "$.stages[2].kind") in codes


def test_qc_is_required_before_publish_only_when_the_policy_requires_review():
    pipeline = PipelineFactory(
        stages=[("read", "read", {}), ("publish", "publish", {})], qc_policy=QCPolicyFactory(no_review=True)
    )
    assert pipeline_validate(pipeline, probe=False).ok
    pipeline.qc_policy.require_review = True
    pipeline.qc_policy.save()
    assert [c[0] for c in _codes(pipeline_validate(pipeline, probe=False))] == ["qc_before_publish"]


def test_duplicate_ids_unknown_kinds_and_missing_references():
    body = template_export_body(PipelineFactory())
    body["stages"][2]["id"] = "filter"
    body["stages"][3]["kind"] = "telepathy"
    body["output_dataset"] = {"project": "p", "name": "missing"}
    body["qc_policy"] = "no-such-policy"
    codes = {c[0] for c in _codes(template_validate(body, probe=False))}
    assert {"duplicate_stage_id", "unknown_kind", "unknown_dataset", "unknown_qc_policy"} <= codes


def test_inline_policy_needs_a_preferred_aql():
    body = template_export_body(PipelineFactory())
    body["qc_policy"]["aql"] = 3.0
    assert ("invalid_qc_policy", None, "$.qc_policy.aql") in _codes(template_validate(body, probe=False))


def test_a_model_stage_without_a_model_config_is_an_error():
    body = template_export_body(PipelineFactory())
    body["stages"].insert(3, {"id": "score", "kind": "model_inference", "config": {}, "model_config": None})
    assert "model_config_required" in {c[0] for c in _codes(template_validate(body, probe=False))}


def test_unreachable_model_server_is_a_warning_not_an_error():
    mc = ModelConfigFactory(endpoint=f"127.0.0.1:{free_port()}")
    body = template_export_body(PipelineFactory())
    body["stages"].insert(3, {"id": "score", "kind": "model_inference", "config": {}, "model_config": mc.name})
    report = template_validate(body, probe=True)
    model_errors = [e for e in report.errors if e.stage == "score" and e.code != "invalid_config"]
    assert not model_errors
    assert [w.code for w in report.warnings if w.stage == "score"] == ["model_server_unreachable"]


def test_reachable_model_server_gives_no_warning():
    with running_server() as server:
        mc = ModelConfigFactory(endpoint=server.address, model_name="quality-scorer", model_version="")
        body = template_export_body(PipelineFactory())
        body["stages"].insert(3, {"id": "score", "kind": "model_inference", "config": {}, "model_config": mc.name})
        report = template_validate(body, probe=True)
    assert not [w for w in report.warnings if w.stage == "score"]
