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


# ---- The report's shapes and each rule's code, stage and JSON path ------------------------------
def _issues(issues):
    return [(i.code, i.stage, i.path) for i in issues]


def test_the_report_gives_the_api_its_fields_and_a_one_line_summary():
    from pipelines.validation import TemplateValidationFailed, ValidationReport

    report = ValidationReport()
    assert report.ok and report.summary() == "Valid." and report.fields() == {}
    assert report.to_dict() == {"ok": True, "errors": [], "warnings": []}
    report.warn("$.input_dataset", "No input dataset.", "no_input")
    assert report.ok  # warnings never block
    report.error("$.stages[1].config.rules", "bad rule", "invalid_config", "filter")
    report.error("$.output_dataset", "missing", "output_required")
    report.error("$.stages[1].config.rules", "second", "invalid_config", "filter")
    assert not report.ok
    assert report.to_dict() == {
        "ok": False,
        "errors": [
            {"stage": "filter", "path": "$.stages[1].config.rules", "message": "bad rule", "code": "invalid_config"},
            {"stage": None, "path": "$.output_dataset", "message": "missing", "code": "output_required"},
            {"stage": "filter", "path": "$.stages[1].config.rules", "message": "second", "code": "invalid_config"},
        ],
        "warnings": [{"stage": None, "path": "$.input_dataset", "message": "No input dataset.", "code": "no_input"}],
    }
    assert report.fields() == {
        "$.stages[1].config.rules": [
            "$.stages[1].config.rules (stage filter): bad rule",
            "$.stages[1].config.rules (stage filter): second",
        ],
        "$.output_dataset": ["missing"],
    }
    assert report.summary() == "3 error(s); first: $.stages[1].config.rules [filter]: bad rule"
    failed = TemplateValidationFailed(report)
    assert str(failed) == report.summary() and failed.report is report
    only_global = ValidationReport()
    only_global.error("$.output_dataset", "missing", "output_required")
    assert only_global.summary() == "1 error(s); first: $.output_dataset: missing"


def test_a_lone_stage_is_valid_with_warnings_for_what_the_engine_supplies():
    body = template_export_body(PipelineFactory())
    body["stages"] = [body["stages"][1]]  # filter only
    del body["input_dataset"], body["output_dataset"]
    report = template_validate(body, probe=False)
    assert report.ok, report.to_dict()
    assert _issues(report.warnings) == [
        ("implicit_read", None, "$.stages"),
        ("no_publish", None, "$.stages"),
        ("no_input", None, "$.input_dataset"),
    ]
    assert [w.message for w in report.warnings] == [
        "No read stage: the input dataset is read before the first stage.",
        "No publish stage: the run will not produce a dataset version.",
        "No input dataset: each run must name one.",
    ]


def test_a_standard_template_has_neither_errors_nor_warnings():
    report = template_validate(template_export_body(PipelineFactory()), probe=False)
    assert report.errors == [] and report.warnings == []


def test_duplicate_ids_and_unknown_kinds_name_the_stage_the_path_and_the_first_use():
    body = template_export_body(PipelineFactory())
    body["stages"][2]["id"] = "filter"
    body["stages"][3]["kind"] = "telepathy"
    body["stages"][3]["config"] = {"anything": "goes"}  # an unknown kind's config is not checked
    report = template_validate(body, probe=False)
    assert _issues(report.errors) == [
        ("duplicate_stage_id", "filter", "$.stages[2].id"),
        ("unknown_kind", "qc", "$.stages[3].kind"),
        ("qc_before_publish", "publish", "$.stages[4].kind"),  # the policy requires review; no qc stage is left
    ]
    assert report.errors[0].message == "Duplicate stage id 'filter' (first used by stage 1)."
    assert report.errors[1].message == "Unknown stage kind 'telepathy'."


def test_a_template_with_the_same_id_three_times_names_the_first_use_each_time():
    body = template_export_body(PipelineFactory())
    for index in (1, 2):
        body["stages"][index]["id"] = "read"
    messages = [e.message for e in template_validate(body, probe=False).errors if e.code == "duplicate_stage_id"]
    assert messages == [
        "Duplicate stage id 'read' (first used by stage 0).",
        "Duplicate stage id 'read' (first used by stage 0).",
    ]


def test_a_config_error_is_reported_under_the_stage_config_path():
    body = template_export_body(PipelineFactory())
    body["stages"][1]["config"] = {"rules": [{"type": "no-such-rule"}]}
    errors = template_validate(body, probe=False).errors
    assert [(e.code, e.stage) for e in errors] == [("invalid_config", "filter")]
    assert errors[0].path.startswith("$.stages[1].config.rules[0]")
    from pipelines.stagekinds import StageConfigError, registry

    with pytest.raises(StageConfigError) as info:
        registry.get("filter").validate_config(body["stages"][1]["config"])
    assert errors[0].message == info.value.message  # the kind's own message


def test_a_missing_model_config_names_the_stage_and_path():
    body = template_export_body(PipelineFactory())
    body["stages"].insert(3, {"id": "score", "kind": "model_inference", "config": {}, "model_config": "nope"})
    errors = template_validate(body, probe=False).errors
    assert ("unknown_model_config", "score", "$.stages[3].model_config") in _issues(errors)
    assert [e.message for e in errors if e.code == "unknown_model_config"] == ["Model config 'nope' does not exist."]
    body["stages"][3]["model_config"] = None
    errors = template_validate(body, probe=False).errors
    assert ("model_config_required", "score", "$.stages[3].model_config") in _issues(errors)
    assert [e.message for e in errors if e.code == "model_config_required"] == [
        "Stage kind model_inference needs a model config."
    ]


def test_read_and_publish_must_be_first_and_last():
    body = template_export_body(PipelineFactory())
    stages = body["stages"]
    body["stages"] = [stages[1], stages[0], stages[2], stages[4], stages[3]]  # filter, read, clean, publish, qc
    report = template_validate(body, probe=False)
    assert _issues(report.errors) == [
        ("order", "read", "$.stages[1].kind"),
        ("order", "publish", "$.stages[3].kind"),
        ("qc_before_publish", "publish", "$.stages[3].kind"),  # review is required and qc comes after publish
    ]
    assert [e.message for e in report.errors] == [
        "The read stage must be the first stage.",
        "The publish stage must be the last stage.",
        "The QC policy requires review: add a qc stage before publish.",
    ]


def test_a_qc_stage_needs_a_policy_that_exists():
    policy = QCPolicyFactory(name="house-rules")
    body = template_export_body(PipelineFactory())
    del body["qc_policy"]
    errors = template_validate(body, probe=False).errors
    assert _issues(errors) == [("qc_policy_required", "qc", "$.qc_policy")]
    assert errors[0].message == "A qc stage needs a QC policy."
    for ref in ("house-rules", policy.pk):
        body["stages"][3]["config"] = {"policy": ref}
        assert template_validate(body, probe=False).errors == [], ref
    for ref in ("no-such-policy", policy.pk + 1000):
        body["stages"][3]["config"] = {"policy": ref}
        errors = template_validate(body, probe=False).errors
        assert _issues(errors) == [("unknown_qc_policy", "qc", "$.stages[3].config.policy")], ref
        assert errors[0].message == f"QC policy {ref!r} does not exist."


def test_an_inline_policy_requires_review_unless_it_says_otherwise():
    body = template_export_body(PipelineFactory())
    body["stages"] = [s for s in body["stages"] if s["kind"] != "qc"]
    del body["qc_policy"]["require_review"]
    assert _issues(template_validate(body, probe=False).errors) == [
        ("qc_before_publish", "publish", "$.stages[3].kind")
    ]
    body["qc_policy"]["require_review"] = False
    assert template_validate(body, probe=False).errors == []
    # a qc stage after publish does not count
    body["qc_policy"]["require_review"] = True
    body["stages"].append({"id": "late-qc", "kind": "qc", "name": "", "config": {}, "model_config": None})
    codes = [c for c, _s, _p in _issues(template_validate(body, probe=False).errors)]
    assert "qc_before_publish" in codes


def test_a_publish_without_an_output_dataset_is_an_error_unless_its_config_names_one():
    body = template_export_body(PipelineFactory())
    del body["output_dataset"]
    errors = template_validate(body, probe=False).errors
    assert _issues(errors) == [("output_required", None, "$.output_dataset")]
    assert errors[0].message == "A pipeline that publishes needs an output dataset."
    body["stages"][4]["config"] = {"dataset": "dataset-1"}
    assert template_validate(body, probe=False).errors == []


def test_references_name_the_missing_dataset_and_policy():
    body = template_export_body(PipelineFactory())
    body["input_dataset"] = {"project": "p", "name": "gone-in"}
    body["output_dataset"] = {"project": body["project"], "name": "gone-out"}
    body["qc_policy"] = "no-such-policy"
    errors = [e for e in template_validate(body, probe=False).errors if e.code != "qc_before_publish"]
    assert _issues(errors) == [
        ("unknown_dataset", None, "$.input_dataset"),
        ("unknown_dataset", None, "$.output_dataset"),
        ("unknown_qc_policy", None, "$.qc_policy"),
    ]
    assert [e.message for e in errors] == [
        "Dataset p/gone-in does not exist.",
        f"Dataset {body['project']}/gone-out does not exist.",
        "QC policy 'no-such-policy' does not exist.",
    ]


def test_an_inline_policy_is_checked_field_by_field_with_defaults_for_missing_ones():
    body = template_export_body(PipelineFactory())
    for key in ("aql", "inspection_level", "rules"):
        del body["qc_policy"][key]
    assert template_validate(body, probe=False).errors == []  # AQL 1.0, level II, no rules
    body["qc_policy"].update(aql=3.0, inspection_level="IV", rules=[{"type": "no-such-rule"}])
    errors = template_validate(body, probe=False).errors
    assert _issues(errors) == [
        ("invalid_qc_policy", None, "$.qc_policy.aql"),
        ("invalid_qc_policy", None, "$.qc_policy.inspection_level"),
        ("invalid_qc_policy", None, "$.qc_policy.rules"),
    ]
    assert errors[0].message.startswith("AQL must be one of the ISO 2859-1 preferred values: 0.01, 0.015, ")
    assert errors[0].message.endswith(", 10, 15, 25.")
    assert errors[1].message == "Inspection level must be one of I, II, III, S-1, S-2, S-3, S-4."
    assert errors[2].message.startswith("$.rules[0]")


def test_qc_policy_problems_read_each_field():
    from pipelines.validation import qc_policy_problems, qc_rules_problem

    assert qc_policy_problems(aql=None, inspection_level="S-4", rules=None) == {}
    assert qc_policy_problems(aql=0.010, inspection_level="I", rules=[]) == {}
    assert qc_policy_problems(aql=25, inspection_level="III", rules=[{"type": "length", "field": "t", "min": 1}]) == {}
    assert set(qc_policy_problems(aql=0.011, inspection_level="II", rules=[])) == {"aql"}
    assert qc_policy_problems(aql=1.0, inspection_level="II", rules={"type": "length"}) == {
        "rules": "Rules must be a list."
    }
    assert qc_policy_problems(aql=1.0, inspection_level="II", rules="x") == {"rules": "Rules must be a list."}
    assert qc_rules_problem("x") == "Rules must be a list."
    assert qc_rules_problem([{"type": "length", "field": "t", "min": 1}]) is None


def test_a_new_project_must_be_a_slug_unless_the_pipeline_has_one():
    pipeline = PipelineFactory()
    body = template_export_body(pipeline)
    body["project"] = "not a slug!"
    errors = template_validate(body, probe=False).errors
    assert [(e.code, e.path) for e in errors if e.code == "invalid_project"] == [("invalid_project", "$.project")]
    assert [e.message for e in errors if e.code == "invalid_project"] == [
        "The project must be a slug (letters, digits, - and _)."
    ]
    assert not [
        e for e in template_validate(body, probe=False, project=pipeline.project).errors if e.code == "invalid_project"
    ]
    body["project"] = "fine-slug_1"
    assert not [e for e in template_validate(body, probe=False).errors if e.code == "invalid_project"]


def test_the_probe_runs_only_when_asked(monkeypatch):
    calls = []

    def probe(mc, deadline_s):
        calls.append((mc.name, deadline_s))
        raise RuntimeError("connection refused " + "x" * 500)

    monkeypatch.setattr("pipelines.model_configs.model_config_probe", probe)
    mc = ModelConfigFactory()
    body = template_export_body(PipelineFactory())
    body["stages"].insert(3, {"id": "score", "kind": "model_inference", "config": {}, "model_config": mc.name})
    assert not template_validate(body, probe=False).warnings and calls == []
    warnings = [w for w in template_validate(body, probe=True).warnings if w.stage == "score"]
    assert calls == [(mc.name, 0.5)]
    assert _issues(warnings) == [("model_server_unreachable", "score", "$.stages[3].model_config")]
    assert warnings[0].message == f"Model server {mc.endpoint} is not reachable now: connection refused " + "x" * 181


def test_a_server_that_answers_but_is_not_ready_is_a_warning_with_its_reason(monkeypatch):
    from types import SimpleNamespace

    answers = iter(
        [
            SimpleNamespace(ready=True, model_ready=False, error="model loading"),
            SimpleNamespace(ready=False, model_ready=True, error=""),
            SimpleNamespace(ready=True, model_ready=True, error=""),
        ]
    )
    monkeypatch.setattr("pipelines.model_configs.model_config_probe", lambda mc, deadline_s: next(answers))
    mc = ModelConfigFactory()
    body = template_export_body(PipelineFactory())
    body["stages"].insert(3, {"id": "score", "kind": "model_inference", "config": {}, "model_config": mc.name})
    details = []
    for _ in range(3):
        details.append([w.message for w in template_validate(body, probe=True).warnings if w.stage == "score"])
    assert details == [
        [f"Model server {mc.endpoint} is not reachable now: model loading"],
        [f"Model server {mc.endpoint} is not reachable now: server or model not ready"],
        [],
    ]


def test_a_stored_pipeline_validates_as_its_template_with_its_own_project():
    pipeline = PipelineFactory()
    PipelineStage.objects.filter(pipeline=pipeline, key="qc").delete()
    report = pipeline_validate(pipeline, probe=False)
    assert _issues(report.errors) == [("qc_before_publish", "publish", "$.stages[3].kind")]


def test_a_template_of_the_wrong_shape_gives_one_error_at_its_path():
    body = template_export_body(PipelineFactory())
    del body["schema_version"]
    report = template_validate(body, probe=False)
    assert report.to_dict()["errors"] == [
        {"stage": None, "path": "$.schema_version", "message": "schema_version is required.", "code": "schema_version"}
    ]
    body["schema_version"] = 1
    body["stages"][0]["config"] = "not an object"
    errors = template_validate(body, probe=False).errors
    assert [(e.code, e.path, e.stage) for e in errors] == [("wrong_type", "$.stages[0].config", None)]
    assert errors[0].message.startswith("$.stages[0].config: ")


def test_empty_rules_of_the_wrong_type_are_still_refused():
    from pipelines.validation import qc_policy_problems

    for rules in ({}, "", 0):
        assert qc_policy_problems(aql=1.0, inspection_level="II", rules=rules) == {"rules": "Rules must be a list."}


def test_validation_probes_model_servers_unless_told_not_to(monkeypatch):
    from types import SimpleNamespace

    calls = []

    def probe(mc, deadline_s):
        calls.append(mc.name)
        return SimpleNamespace(ready=False, model_ready=False, error="down")

    monkeypatch.setattr("pipelines.model_configs.model_config_probe", probe)
    mc = ModelConfigFactory()
    pipeline = PipelineFactory()
    PipelineStage.objects.create(
        pipeline=pipeline, key="score", kind="model_inference", position=35, config={}, model_config=mc
    )
    body = template_export_body(pipeline)
    assert [w.code for w in template_validate(body).warnings if w.stage == "score"] == ["model_server_unreachable"]
    assert [w.code for w in pipeline_validate(pipeline).warnings if w.stage == "score"] == ["model_server_unreachable"]
    assert calls == [mc.name, mc.name]
    assert not [w for w in pipeline_validate(pipeline, probe=False).warnings if w.stage == "score"]
    assert calls == [mc.name, mc.name]


def test_a_kind_whose_validator_chokes_on_the_config_reports_a_config_error_not_a_crash(monkeypatch):
    from pipelines.stagekinds import registry
    from pipelines.stagekinds.base import PerRecordStageKind

    class Choking(PerRecordStageKind):
        name = "test_choking"
        label = "Test: choking"

        def validate_config(self, config):
            raise TypeError("unsupported operand " + "x" * 400)

        def process(self, records, ctx):
            return records

    registry.get("read")  # load the built-in kinds first; the stand-in is removed after the test
    monkeypatch.setitem(registry._kinds, Choking.name, Choking())
    body = template_export_body(PipelineFactory())
    body["stages"].insert(2, {"id": "choke", "kind": "test_choking", "name": "", "config": {}, "model_config": None})
    errors = template_validate(body, probe=False).errors
    assert _issues(errors) == [("invalid_config", "choke", "$.stages[2].config")]
    assert errors[0].message == "unsupported operand " + "x" * 280  # cut at 300 characters


def test_references_by_name_are_looked_up_in_their_own_project_and_by_policy_name():
    reviewed = QCPolicyFactory(name="reviewed", require_review=True)
    QCPolicyFactory(name="unreviewed", require_review=False)
    body = template_export_body(PipelineFactory())
    body["stages"] = [s for s in body["stages"] if s["kind"] != "qc"]
    # the same dataset name in another project does not count
    body["input_dataset"] = {"project": "other-project", "name": body["input_dataset"]["name"]}
    body["qc_policy"] = "unreviewed"
    assert _issues(template_validate(body, probe=False).errors) == [("unknown_dataset", None, "$.input_dataset")]
    del body["input_dataset"]
    assert template_validate(body, probe=False).errors == []  # a stored policy that needs no review
    body["qc_policy"] = reviewed.name
    assert _issues(template_validate(body, probe=False).errors) == [
        ("qc_before_publish", "publish", "$.stages[3].kind")
    ]
    del body["qc_policy"]  # no policy: nothing to review
    assert template_validate(body, probe=False).errors == []
