"""Backfills: a cost preview from the template version's recent runs, then one run per chosen input version."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from rest_framework.test import APIClient

from pipelines.models import PipelineTemplate
from tasks.backfills import backfill_preview, backfill_start
from tasks.choices import RunStatus
from tasks.models import TaskRun
from tasks.services import RunRefused, run_start
from tasks.tests.factories import STREAMING_STAGES, make_pipeline, make_records, published, reference_output

pytestmark = pytest.mark.django_db


def chain(doorbell, root, versions=2):
    """up publishes `versions` versions of its output; down reads that dataset."""
    up = make_pipeline(root, records=make_records(120), name="up", batch_size=50)
    made = []
    for _ in range(versions):
        run = run_start(pipeline=up, actor=None)
        doorbell.drain()
        run.refresh_from_db()
        assert run.status == RunStatus.SUCCEEDED, run.status_reason
        made.append(run.output_version)
    down = make_pipeline(root, records=[], name="down", stages=STREAMING_STAGES, batch_size=40)
    down.input_dataset = up.output_dataset
    down.template = PipelineTemplate.objects.create(name="down", version=3, body={}, checksum="x" * 64)
    down.save()
    return up, down, made


def history(pipeline, *, records_in, tokens, template=None):
    """A finished run of the pipeline's template version that spent `tokens` on `records_in` records."""
    run = run_start(pipeline=pipeline, actor=None)
    TaskRun.objects.filter(pk=run.pk).update(
        status=RunStatus.SUCCEEDED,
        finished_at=timezone.now(),
        records_in=records_in,
        prompt_tokens=tokens * 3 // 4,
        completion_tokens=tokens - tokens * 3 // 4,
        template=template or pipeline.template,
    )


def test_preview_estimates_tokens_from_the_template_versions_recent_runs(doorbell, file_root):
    _up, down, versions = chain(doorbell, file_root)
    preview = backfill_preview(pipeline=down, versions=[v.version for v in versions])
    assert preview["records"] == sum(v.record_count for v in versions) > 0
    assert preview["template"]["version"] == 3
    assert preview["history_runs"] == 0 and preview["estimated_tokens"] is None
    history(down, records_in=100, tokens=500)
    history(down, records_in=300, tokens=1500)
    other = PipelineTemplate.objects.create(name="down", version=2, body={}, checksum="y" * 64)
    history(down, records_in=10, tokens=99_999, template=other)  # another template version: not counted
    preview = backfill_preview(pipeline=down, versions=[versions[0].version])
    assert preview["history_runs"] == 2 and preview["tokens_per_record"] == 5.0
    assert preview["estimated_tokens"] == 5 * versions[0].record_count


def test_backfill_runs_each_version_once_with_lineage(doorbell, file_root):
    _up, down, versions = chain(doorbell, file_root)
    runs = backfill_start(pipeline=down, versions=[v.version for v in versions], actor=None)
    assert [r.input_version_id for r in runs] == [v.pk for v in versions]
    doorbell.drain()
    for run, version in zip(runs, versions, strict=True):
        run.refresh_from_db()
        assert run.status == RunStatus.SUCCEEDED, run.status_reason
        assert run.trigger["kind"] == "backfill" and run.trigger["version"]["id"] == version.pk
        assert run.output_version.lineage["trigger"]["kind"] == "backfill"
        source = make_records(120)
        assert published(run) == reference_output(reference_output(source), STREAMING_STAGES)


def test_bad_versions_are_named_and_nothing_starts(doorbell, file_root):
    _up, down, versions = chain(doorbell, file_root, versions=1)
    with pytest.raises(RunRefused) as exc:
        backfill_start(pipeline=down, versions=[versions[0].version, 42], actor=None)
    assert "has no published version 42" in exc.value.message_dict["versions"][0]
    assert not TaskRun.objects.filter(pipeline=down).exists()


def test_api_command_and_admin(doorbell, file_root, admin_user, admin_client):
    _up, down, versions = chain(doorbell, file_root)
    numbers = [v.version for v in versions]
    client = APIClient()
    client.force_authenticate(admin_user)
    preview = client.post("/api/v1/tasks/backfills/preview/", {"pipeline": down.pk, "versions": numbers}, format="json")
    assert preview.status_code == 200 and preview.json()["records"] == sum(v.record_count for v in versions)
    unconfirmed = client.post("/api/v1/tasks/backfills/", {"pipeline": down.pk, "versions": numbers}, format="json")
    assert unconfirmed.status_code == 400 and "confirm" in unconfirmed.content.decode()
    bad = client.post("/api/v1/tasks/backfills/preview/", {"pipeline": down.pk, "versions": [99]}, format="json")
    assert bad.status_code == 400 and "no published version 99" in bad.content.decode()
    assert not TaskRun.objects.filter(pipeline=down).exists()
    started = client.post(
        "/api/v1/tasks/backfills/", {"pipeline": down.pk, "versions": numbers[:1], "confirm": True}, format="json"
    )
    assert started.status_code == 201 and len(started.json()["runs"]) == 1

    out = StringIO()
    call_command("backfill", str(down.pk), "--input-version", str(numbers[1]), stdout=out)
    assert "Nothing started" in out.getvalue() and TaskRun.objects.filter(pipeline=down).count() == 1
    call_command("backfill", str(down.pk), "--input-version", str(numbers[1]), "--yes", stdout=out)
    assert TaskRun.objects.filter(pipeline=down).count() == 2
    with pytest.raises(CommandError, match="no published version 77"):
        call_command("backfill", str(down.pk), "--input-version", "77")

    url = "/pipelines/pipeline/"
    body = {"action": "run_backfill_action", "_selected_action": [down.pk], "apply": "1", "versions": "1, 2"}
    page = admin_client.post(url, body)
    assert page.status_code == 200 and "df-backfill-preview" in page.content.decode()
    assert TaskRun.objects.filter(pipeline=down).count() == 2
    admin_client.post(url, {**body, "confirm": "1"}, follow=True)
    assert TaskRun.objects.filter(pipeline=down).count() == 4
    doorbell.drain()
    assert set(TaskRun.objects.filter(pipeline=down).values_list("status", flat=True)) == {RunStatus.SUCCEEDED}
