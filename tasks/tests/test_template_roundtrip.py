"""Done-when: a template exported from one portal and imported into a fresh one runs to the same published checksum."""

import json
import shutil

import pytest
from django.urls import reverse

from catalog.models import Dataset, DatasetVersion, DataSource, Project
from pipelines.models import Pipeline, PipelineTemplate, QCPolicy
from pipelines.services import template_export, template_import_text
from tasks.choices import RunStatus
from tasks.models import Task, TaskRun
from tasks.services import run_start
from tasks.tests.factories import make_records, write_jsonl

pytestmark = pytest.mark.django_db

STAGES = [
    ("read", "read", {}),
    ("filter", "filter", {"rules": [{"type": "length", "field": "text", "min": 8}]}),
    ("clean", "clean", {"steps": [{"op": "normalize_whitespace"}, {"op": "strip_html"}]}),
    ("dedup", "dedup", {"fields": ["text"]}),
    ("publish", "publish", {}),
]


def _catalog(root):
    """What an operator sets up in any portal before importing: project, file source, input and output datasets."""
    project = Project.objects.create(name="Acme", slug="acme")
    source = DataSource.objects.create(project=project, name="files", kind="file", config={"root": str(root)})
    write_jsonl(root / "in" / "docs.jsonl", make_records(400))
    inp = Dataset.objects.create(project=project, source=source, name="docs", format="jsonl", location="in/docs.jsonl")
    out = Dataset.objects.create(
        project=project, source=source, name="docs-clean", format="jsonl", location="out/docs.jsonl"
    )
    return project, inp, out


def _run_to_publish(doorbell, pipeline) -> TaskRun:
    run = run_start(pipeline=pipeline, actor=None)
    results = doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, (run.status_reason, results[-5:])
    return run


def _forget_portal():
    """Drop every row a portal had (the 'fresh portal' starts from an empty database)."""
    TaskRun.objects.all().delete()
    Task.objects.all().delete()
    DatasetVersion.objects.all().delete()
    Pipeline.objects.all().delete()
    PipelineTemplate.objects.all().delete()
    QCPolicy.objects.all().delete()
    Dataset.objects.all().delete()
    DataSource.objects.all().delete()
    Project.objects.all().delete()


def test_exported_template_reproduces_pipeline_and_checksum_in_a_fresh_portal(
    doorbell, settings, tmp_path, admin_user, client
):
    from pipelines.models import PipelineStage

    root_a = tmp_path / "portal-a"
    root_a.mkdir()
    settings.FILE_ROOTS = [root_a]
    project, inp, out = _catalog(root_a)
    pipeline = Pipeline.objects.create(
        project=project, name="docs-clean", input_dataset=inp, output_dataset=out, batch_size=64
    )
    for position, (key, kind, config) in enumerate(STAGES):
        PipelineStage.objects.create(pipeline=pipeline, key=key, kind=kind, position=position, config=config)
    body, template_a = template_export(pipeline=pipeline, actor=admin_user)
    pipeline.refresh_from_db()
    run_a = _run_to_publish(doorbell, pipeline)
    version_a = DatasetVersion.objects.get(pk=run_a.output_version_id)
    assert version_a.status == "published" and version_a.template_version_id == template_a.pk
    assert version_a.record_count == run_a.records_out > 0
    exported = json.dumps(body, indent=2).encode()
    client.force_login(admin_user)
    page = client.get(reverse("pipelines:template-versions", args=[template_a.name])).content.decode()
    assert "100%" in page and str(run_a) in page  # the version's runs and success rate sit beside the diff

    _forget_portal()
    root_b = tmp_path / "portal-b"
    root_b.mkdir()
    settings.FILE_ROOTS = [root_b]
    _catalog(root_b)
    plan = template_import_text(raw=exported, actor=admin_user)
    pipeline_b = plan.pipeline
    assert plan.template.checksum == template_a.checksum
    assert [(s.key, s.kind, s.config) for s in pipeline_b.stages.order_by("position")] == [
        (k, kind, c) for k, kind, c in STAGES
    ]
    run_b = _run_to_publish(doorbell, pipeline_b)
    version_b = DatasetVersion.objects.get(pk=run_b.output_version_id)
    assert version_b.checksum == version_a.checksum
    assert version_b.record_count == version_a.record_count
    assert version_b.lineage["template"]["version"] == 1
    shutil.rmtree(root_a)
