"""Backfill over a record range (exact in every file format and read mode) and with a chosen template version."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from pipelines.models import PipelineStage, PipelineTemplate
from pipelines.templates_io import template_export_body, template_version_save
from tasks import engine
from tasks.backfills import backfill_preview, backfill_start
from tasks.choices import RunStatus
from tasks.models import StageRun, TaskRun
from tasks.services import RunRefused, run_start
from tasks.tests.factories import STREAMING_STAGES, make_pipeline, make_records, published, reference_output

pytestmark = pytest.mark.django_db


def upstream(doorbell, root, *, fmt="jsonl", records=1300, name="up"):
    """A pipeline `up` that published one version of its output in `fmt`; returns (version, its records)."""
    up = make_pipeline(
        root, records=make_records(records, unique=True), name=name, stages=[("publish", "publish", {})], batch_size=500
    )
    out = up.output_dataset
    out.format, out.location = fmt, f"out/{name}.{fmt}"
    out.save()
    run = run_start(pipeline=up, actor=None)
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    return up, run.output_version, published(run)


def downstream(root, up, *, batch_size=97, name="down"):
    down = make_pipeline(root, records=[], name=name, stages=STREAMING_STAGES, batch_size=batch_size)
    down.input_dataset = up.output_dataset
    down.save()
    return down


def run_slice(doorbell, down, version, first, last) -> TaskRun:
    (run,) = backfill_start(pipeline=down, versions=[version.version], actor=None, first_record=first, last_record=last)
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    return run


@pytest.mark.parametrize(
    ("fmt", "planned", "fused"),
    [
        ("jsonl", True, True),  # batch 0 probes 500 records, then plans the rest of the slice
        ("jsonl", True, False),  # batch 0 plans first, in chunks of the batch size
        ("jsonl", False, True),  # chained reads
        ("csv", True, True),
        ("parquet", True, True),
    ],
    ids=["jsonl-probe-plan", "jsonl-plan", "jsonl-chain", "csv", "parquet"],
)
def test_a_record_range_reads_exactly_that_slice(doorbell, file_root, monkeypatch, fmt, planned, fused):
    monkeypatch.setattr(engine, "PLANNED_READS_ENABLED", planned)
    monkeypatch.setattr(engine, "FUSION_ENABLED", fused)
    monkeypatch.setattr(engine, "SEEK_CHUNK", 61)  # the reading-up-to-the-start path crosses several chunks
    up, version, source = upstream(doorbell, file_root, fmt=fmt)
    down = downstream(file_root, up)
    for first, last in ((438, 1211), (1, 97), (1204, 1300), (700, 700), (None, 5), (1299, None)):
        run = run_slice(doorbell, down, version, first, last)
        wanted = source[(first or 1) - 1 : last]
        assert published(run) == reference_output(wanted, STREAMING_STAGES), (first, last)
        read = StageRun.objects.get(run=run, position=0)
        assert read.records_in == len(wanted) and run.records_in == len(wanted), (first, last)
        assert run.pipeline_snapshot["pipeline"]["input_range"] == {"first": first or 1, "last": last}
        lineage = run.output_version.lineage
        assert lineage["input_range"] == {"first": first or 1, "last": last}
        assert lineage["trigger"]["records"] == {"first": first or 1, "last": last}


def test_bad_ranges_name_the_field(doorbell, file_root):
    up, version, _source = upstream(doorbell, file_root, records=120)
    down = downstream(file_root, up)
    cases = [
        ({"first_record": -3}, "first_record", "counted from 1"),
        ({"first_record": 0}, "first_record", "counted from 1"),
        ({"last_record": -1}, "last_record", "counted from 1"),
        ({"first_record": 50, "last_record": 10}, "last_record", "comes before the first record (50)"),
        ({"first_record": 121}, "first_record", "holds 120 records: record 121 is beyond its end"),
        ({"first_record": 3, "last_record": 500}, "last_record", "holds 120 records: record 500 is beyond"),
    ]
    for given, field, text in cases:
        with pytest.raises(RunRefused) as exc:
            backfill_start(pipeline=down, versions=[version.version], actor=None, **given)
        assert text in exc.value.message_dict[field][0], (given, exc.value.message_dict)
    assert not TaskRun.objects.filter(pipeline=down).exists()


def test_the_preview_scales_to_the_slice(doorbell, file_root):
    up, version, _source = upstream(doorbell, file_root, records=300)
    down = downstream(file_root, up)
    preview = backfill_preview(pipeline=down, versions=[version.version], first_record=101, last_record=250)
    assert preview["records"] == 150 and preview["range"] == {"first": 101, "last": 250}
    assert preview["versions"][0]["slice_records"] == 150 and preview["versions"][0]["records"] == 300
    run = run_start(pipeline=down, actor=None, input_version=version)
    TaskRun.objects.filter(pk=run.pk).update(
        status=RunStatus.SUCCEEDED, records_in=100, prompt_tokens=300, completion_tokens=100, template=down.template
    )
    preview = backfill_preview(pipeline=down, versions=[version.version], first_record=201)
    assert preview["records"] == 100 and preview["tokens_per_record"] == 4.0 and preview["estimated_tokens"] == 400


def test_api_command_and_admin_take_a_range(doorbell, file_root, admin_user, admin_client):
    up, version, source = upstream(doorbell, file_root, records=200)
    down = downstream(file_root, up)
    client = APIClient()
    client.force_authenticate(admin_user)
    body = {"pipeline": down.pk, "versions": [version.version], "first_record": 11, "last_record": 40}
    preview = client.post("/api/v1/tasks/backfills/preview/", body, format="json")
    assert preview.status_code == 200 and preview.json()["records"] == 30
    bad = client.post("/api/v1/tasks/backfills/preview/", {**body, "first_record": 0}, format="json")
    assert bad.status_code == 400 and "first_record" in bad.content.decode()
    started = client.post("/api/v1/tasks/backfills/", {**body, "confirm": True}, format="json")
    assert started.status_code == 201, started.content
    doorbell.drain()
    run = TaskRun.objects.get(pipeline=down)
    assert published(run) == reference_output(source[10:40], STREAMING_STAGES)

    out = StringIO()
    call_command("backfill", str(down.pk), "--input-version", str(version.version), "--first-record", "191", stdout=out)
    assert "10 records" in out.getvalue() and "records 191–the last" in out.getvalue()
    with pytest.raises(CommandError, match="last_record"):
        call_command("backfill", str(down.pk), "--input-version", "1", "--first-record", "5", "--last-record", "2")

    url = "/pipelines/pipeline/"
    form = {
        "action": "run_backfill_action",
        "_selected_action": [down.pk],
        "apply": "1",
        "versions": str(version.version),
        "first_record": "21",
        "last_record": "30",
    }
    page = admin_client.post(url, form)
    assert page.status_code == 200 and "df-backfill-preview" in page.content.decode()
    refused = admin_client.post(url, {**form, "last_record": "999"})
    assert "record 999 is beyond its end" in refused.content.decode()
    admin_client.post(url, {**form, "confirm": "1"}, follow=True)
    doorbell.drain()
    last = TaskRun.objects.filter(pipeline=down).order_by("-created_at").first()
    assert last.trigger["records"] == {"first": 21, "last": 30}
    assert published(last) == reference_output(source[20:30], STREAMING_STAGES)


# ---- a chosen template version ----------------------------------------------------------------
OLD_STAGES = [("clean", "clean", {"steps": [{"op": "strip_html"}]}), ("publish", "publish", {})]


def versions_of(down):
    """Version 1 of down's template has OLD_STAGES; version 2 (current) the pipeline's STREAMING_STAGES."""
    current = list(down.stages.order_by("position"))
    down.stages.exclude(key="read").delete()
    for pos, (key, kind, config) in enumerate(OLD_STAGES, start=1):
        PipelineStage.objects.create(pipeline=down, key=key, kind=kind, position=pos, config=config)
    old, _ = template_version_save(body=template_export_body(down), actor=None, project=down.project)
    down.stages.all().delete()
    for stage in current:
        stage.pk = None
        stage.save()
    new, _ = template_version_save(body=template_export_body(down), actor=None, project=down.project)
    down.template = new
    down.save()
    return old, new


def test_a_backfill_runs_a_chosen_template_version(doorbell, file_root):
    up, version, source = upstream(doorbell, file_root, records=150)
    down = downstream(file_root, up)
    old, new = versions_of(down)
    assert (old.version, new.version) == (1, 2)
    preview = backfill_preview(pipeline=down, versions=[version.version], template=old.pk)
    assert preview["template"] == {"id": old.pk, "name": old.name, "version": 1, "current": False}
    assert preview["history_runs"] == 0 and preview["estimated_tokens"] is None  # unknown, not zero
    stages_before = list(down.stages.order_by("position").values_list("key", "kind", "config"))

    (run,) = backfill_start(pipeline=down, versions=[version.version], actor=None, template=old)
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    assert [s["key"] for s in run.pipeline_snapshot["stages"]] == ["read", "clean", "publish"]
    assert run.template_id == old.pk and run.output_version.lineage["template"]["version"] == 1
    assert run.trigger["template"]["version"] == 1
    assert published(run) == reference_output(source, OLD_STAGES)
    down.refresh_from_db()
    assert down.template_id == new.pk
    assert list(down.stages.order_by("position").values_list("key", "kind", "config")) == stages_before

    # Its history now estimates that version's cost; the current version still has none.
    TaskRun.objects.filter(pk=run.pk).update(prompt_tokens=run.records_in * 2)
    assert backfill_preview(pipeline=down, versions=[version.version], template=old.pk)["tokens_per_record"] == 2.0
    assert backfill_preview(pipeline=down, versions=[version.version])["estimated_tokens"] is None

    # A re-run of it keeps that version's stages (the current ones differ from stage 1 on).
    from tasks.reruns import run_rerun_from_stage

    rerun = run_rerun_from_stage(run=run, stage="publish", actor=None)
    doorbell.drain()
    rerun.refresh_from_db()
    assert rerun.status == RunStatus.SUCCEEDED and rerun.template_id == old.pk
    assert published(rerun) == published(run)


def test_a_template_version_of_another_pipeline_is_refused(doorbell, file_root, admin_user):
    up, version, _source = upstream(doorbell, file_root, records=50)
    down = downstream(file_root, up)
    versions_of(down)
    other = PipelineTemplate.objects.create(name="someone-else", version=1, body={}, checksum="z" * 64)
    with pytest.raises(RunRefused) as exc:
        backfill_start(pipeline=down, versions=[version.version], actor=None, template=other.pk)
    assert "is not a version of the template of pipeline down" in exc.value.message_dict["template"][0]
    client = APIClient()
    client.force_authenticate(admin_user)
    answer = client.post(
        "/api/v1/tasks/backfills/preview/",
        {"pipeline": down.pk, "versions": [version.version], "template": other.pk},
        format="json",
    )
    assert answer.status_code == 400 and "template" in answer.content.decode()
    with pytest.raises(CommandError, match="has no version 9 \\(its versions: 1, 2\\)"):
        call_command("backfill", str(down.pk), "--input-version", str(version.version), "--template-version", "9")
    assert not TaskRun.objects.filter(pipeline=down).exists()


def test_seek_record_lands_on_the_record_in_jsonl_and_parquet(file_root):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from catalog.connectors.files import FileConnector

    rows = [{"id": i, "text": f"r{i}"} for i in range(1000)]
    pq.write_table(pa.Table.from_pylist(rows), file_root / "groups.parquet", row_group_size=100)
    lines = "".join(f'{{"id": {i}, "text": "r{i}"}}\n' + ("\n" if i % 7 == 0 else "") for i in range(1000))
    (file_root / "blanks.jsonl").write_text("\n" + lines)
    conn = FileConnector({"root": str(file_root)})
    for location, fmt in (("groups.parquet", "parquet"), ("blanks.jsonl", "jsonl")):
        ref = {"location": location, "format": fmt}
        for index in (1, 99, 100, 101, 550, 999):
            checkpoint = conn.seek_record(ref, index)
            assert checkpoint["record"] == index
            records, after = next(conn.read(ref, batch_size=3, start=checkpoint))
            # The Parquet reader may return fewer than asked after a skip within a row group: contiguous from index.
            ids = [r["id"] for r in records]
            assert ids and ids == list(range(index, index + len(ids))), (fmt, index, ids)
            assert after["record"] == index + len(records)
        end = conn.seek_record(ref, 1000)
        assert end["record"] == 1000 and next(conn.read(ref, batch_size=3, start=end), None) is None
        assert conn.seek_record(ref, 1001) == {"record": 1000, "past_end": True}
