"""Publish is QC-gated (override audited), atomic, idempotent, with lineage; archive keeps lineage."""

import json
import uuid

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from catalog.models import DatasetVersion
from catalog.tests.factories import DatasetVersionFactory
from dataflare_portal.core.models import AuditLogEntry
from pipelines.tests.factories import QCPolicyFactory
from tasks import publish as publish_module
from tasks.choices import LotDecision
from tasks.publish import PublishBlocked, dataset_version_archive, publish_run
from tasks.qc import qc_stage_run, review_item_decide

from .qc_helpers import make_run, qc_stage, records

pytestmark = pytest.mark.django_db


def _reviewed_run(operator, *, rejects: int, n: int = 5, ac: int = 1):
    policy = QCPolicyFactory(aql=6.5, sample_size=n, acceptance_number=ac)
    run = make_run(qc_policy=policy)
    data = records(60)
    lot = qc_stage_run(stage_run=qc_stage(run), records_iter=iter([data]))
    for i, item in enumerate(lot.items.order_by("sequence")):
        if i < rejects:
            review_item_decide(item=item, actor=operator, decision="rejected", reason="off-topic")
        else:
            review_item_decide(item=item, actor=operator, decision="accepted")
    lot.refresh_from_db()
    return run, lot, data


def _published_file(version):
    root = version.dataset.source.config["root"]
    from pathlib import Path

    from django.conf import settings

    base = Path(root) if Path(root).is_absolute() else Path(settings.FILE_ROOTS[0]) / root
    return base / version.location


def test_a_lot_within_ac_publishes_with_lineage(operator_user):
    run, lot, data = _reviewed_run(operator_user, rejects=1)
    assert lot.decision == LotDecision.ACCEPTED
    parent = DatasetVersionFactory(dataset=run.pipeline.input_dataset)
    version = publish_run(run=run, actor=operator_user, chunks=iter([data[:30], data[30:]]))
    assert version.status == "published" and version.record_count == 60 and len(version.checksum) == 64
    path = _published_file(version)
    assert [json.loads(line) for line in path.read_text().splitlines()] == data
    assert version.qc_decision["decision"] == "accepted" and version.qc_decision["defects"] == 1
    assert version.lineage["run_id"] == str(run.pk) and list(version.parents.all()) == [parent]
    run.refresh_from_db()
    assert run.output_version_id == version.pk
    assert publish_run(run=run, actor=operator_user).pk == version.pk  # idempotent
    assert AuditLogEntry.objects.filter(action="publish", object_id=str(version.pk)).count() == 1


def test_a_lot_over_ac_cannot_publish_without_an_audited_admin_override(operator_user, admin_user, local_auth):
    run, lot, data = _reviewed_run(operator_user, rejects=2)
    assert lot.decision == LotDecision.REJECTED and lot.evidence["defects_in_sample"] == 2 > lot.acceptance_number
    with pytest.raises(PublishBlocked) as blocked:
        publish_run(run=run, actor=operator_user, chunks=iter([data]))
    assert blocked.value.retry_after is None  # an operator's request is refused, not parked
    with pytest.raises(PublishBlocked) as engine_blocked:
        publish_run(run=run, actor=None, chunks=iter([data]))
    assert engine_blocked.value.retry_after  # the engine waits instead of failing
    with pytest.raises(PermissionDenied):
        publish_run(run=run, actor=operator_user, override_reason="looks fine to me", chunks=iter([data]))
    assert not DatasetVersion.objects.filter(status="published").exists()
    version = publish_run(run=run, actor=admin_user, override_reason="accepted by the data owner", chunks=iter([data]))
    assert version.status == "published" and version.qc_decision["decision"] == "overridden"
    override = AuditLogEntry.objects.get(action="override", object_id=str(lot.pk))
    assert override.actor == admin_user and override.message == "accepted by the data owner"
    assert "override" in AuditLogEntry.objects.get(action="publish").message


def test_a_failing_write_leaves_no_published_version_and_no_file(operator_user):
    run, lot, data = _reviewed_run(operator_user, rejects=0)

    def broken():
        yield data[:10]
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        publish_run(run=run, actor=operator_user, chunks=broken())
    version = DatasetVersion.objects.get(dataset=run.pipeline.output_dataset)
    assert version.status == "failed" and "disk on fire" in version.lineage["error"]
    out_dir = _published_file(version).parent
    assert not out_dir.exists() or not [p for p in out_dir.iterdir() if p.suffix == ".jsonl"]


def test_a_failing_finalize_removes_the_committed_file(operator_user, monkeypatch):
    run, lot, data = _reviewed_run(operator_user, rejects=0)

    def boom(**kwargs):
        raise RuntimeError("audit log unavailable")

    monkeypatch.setattr(publish_module, "audit_record", boom)
    with pytest.raises(RuntimeError):
        publish_run(run=run, actor=operator_user, chunks=iter([data]))
    version = DatasetVersion.objects.get(dataset=run.pipeline.output_dataset)
    assert version.status == "failed"
    out_dir = _published_file(DatasetVersion(dataset=version.dataset, location="out/x")).parent
    assert not list(out_dir.rglob("*.jsonl"))


def test_archive_moves_the_file_and_keeps_lineage(operator_user, settings):
    run, lot, data = _reviewed_run(operator_user, rejects=0)
    version = publish_run(run=run, actor=operator_user, chunks=iter([data]))
    path = _published_file(version)
    assert path.exists()
    archived = dataset_version_archive(version=version, actor=operator_user)
    assert archived.status == "archived" and not path.exists()
    assert archived.archive_location.startswith(str(settings.ARCHIVE_DIR))
    from pathlib import Path

    assert Path(archived.archive_location).read_text().count("\n") == 60
    assert archived.lineage["run_id"] == str(run.pk) and archived.checksum == version.checksum
    assert AuditLogEntry.objects.filter(action="archive", object_id=str(version.pk)).count() == 1
    failed = DatasetVersionFactory(dataset=version.dataset, status="failed", checksum="")
    with pytest.raises(ValidationError):
        dataset_version_archive(version=failed, actor=operator_user)


def test_api_review_override_publish_and_archive(client, operator_user, admin_user, local_auth):
    policy = QCPolicyFactory(aql=6.5, sample_size=2, acceptance_number=0)
    run = make_run(qc_policy=policy)
    data = records(20)
    lot = qc_stage_run(stage_run=qc_stage(run), records_iter=iter([data]))
    monkey_chunks = iter([data])
    client.force_login(operator_user)
    items = client.get(f"/api/v1/tasks/review-items/?lot={lot.pk}").json()["results"]
    bad = client.post(f"/api/v1/tasks/review-items/{items[0]['id']}/decide/", {"decision": "rejected"})
    assert bad.status_code == 400 and "reason" in bad.json()["error"]["fields"]
    client.post(f"/api/v1/tasks/review-items/{items[0]['id']}/decide/", {"decision": "rejected", "reason": "spam"})
    client.post(f"/api/v1/tasks/review-items/{items[1]['id']}/decide/", {"decision": "accepted"})
    assert client.get(f"/api/v1/tasks/qc-lots/{lot.pk}/").json()["decision"] == "rejected"
    refused = client.post(f"/api/v1/tasks/qc-lots/{lot.pk}/publish/", {})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "qc_not_accepted"
    assert client.post(f"/api/v1/tasks/qc-lots/{lot.pk}/override/", {"reason": "x"}).status_code == 403
    client.force_login(admin_user)
    assert client.post(f"/api/v1/tasks/qc-lots/{lot.pk}/override/", {"reason": ""}).status_code == 400
    original = publish_module._output_chunks
    publish_module._output_chunks = lambda run: monkey_chunks
    try:
        published = client.post(f"/api/v1/tasks/qc-lots/{lot.pk}/publish/", {"override_reason": "owner agreed"})
    finally:
        publish_module._output_chunks = original
    assert published.status_code == 201, published.content
    version_id = published.json()["id"]
    archived = client.post(f"/api/v1/tasks/dataset-versions/{version_id}/archive/")
    assert archived.status_code == 200 and archived.json()["status"] == "archived"


def test_jsonl_parts_are_copied_byte_for_byte_and_match_the_decoded_path(operator_user, tmp_path, settings):
    from catalog.connectors.files import FileWriter
    from tasks import workspace

    settings.WORKSPACE_DIR = str(tmp_path / "ws")
    data = [
        {"id": 1, "text": "数据 with “quotes” and \\n escapes\n", "score": 0.25, "tags": ["a", {"b": None}]},
        {"id": 2, "text": "emoji 🚀 and a tab\t", "score": 1e-07, "nested": {"x": [1, 2.5, True]}},
        {"id": 3, "text": "", "score": -0.0},
    ] * 7
    refs = []
    for i, part in enumerate([data[:5], [], data[5:]]):
        path = tmp_path / "ws" / f"part{i}.jsonl"
        workspace.write_jsonl(path, part)
        refs.append(workspace.relative(path))

    run_raw, _lot, _data = _reviewed_run(operator_user, rejects=0)
    parts = workspace.Parts(refs)
    with pytest.MonkeyPatch.context() as mp:  # the copy must not decode and re-encode
        mp.setattr(FileWriter, "write", lambda self, records: pytest.fail("records were re-encoded"))
        raw_version = publish_run(run=run_raw, actor=operator_user, chunks=parts)
    assert parts.records == len(data) and raw_version.record_count == len(data)

    run_decoded, _lot, _data = _reviewed_run(operator_user, rejects=0)
    decoded_version = publish_run(run=run_decoded, actor=operator_user, chunks=iter(list(workspace.Parts(refs))))
    raw_bytes = _published_file(raw_version).read_bytes()
    assert raw_bytes == _published_file(decoded_version).read_bytes()
    assert raw_version.checksum == decoded_version.checksum and raw_version.size_bytes == len(raw_bytes)
    assert [json.loads(line) for line in raw_bytes.decode().splitlines()] == data


# ---- Location templates (issue 11): never str.format ------------------------------------------------
SETTINGS_WALK = "out/{run_id.__init__.__globals__[sys].modules[django.conf].settings.SECRET_KEY}.jsonl"


def test_it_refuses_a_location_template_that_walks_to_the_settings(settings):
    from catalog.tests.factories import DatasetFactory
    from tasks.publish import PublishError, version_location

    dataset = DatasetFactory()
    with pytest.raises(PublishError) as info:
        version_location(dataset, SETTINGS_WALK, 3, uuid.uuid4(), "jsonl")
    assert settings.SECRET_KEY not in str(info.value)
    assert version_location(dataset, "out/{dataset}/v{version:03d}.jsonl", 3, uuid.uuid4(), "jsonl") == (
        f"out/{dataset.name}/v003.jsonl"
    )


def test_a_stored_hostile_location_publishes_nothing_and_leaks_nothing(operator_user, settings):
    """A row saved before validation existed (or written around it) still cannot leak at publish time."""
    from pathlib import Path

    from tasks.publish import PublishError

    run, lot, data = _reviewed_run(operator_user, rejects=0)
    run.stage_runs.filter(kind="publish").update(config={"location": SETTINGS_WALK})
    with pytest.raises(PublishError):
        publish_run(run=run, actor=operator_user, chunks=iter([data]))
    secret = settings.SECRET_KEY
    assert not DatasetVersion.objects.filter(status="published").exists()
    assert not any(secret in (v.location + json.dumps(v.lineage)) for v in DatasetVersion.objects.all())
    assert not any(secret in json.dumps([e.message, e.before, e.after]) for e in AuditLogEntry.objects.all())
    roots = [Path(r) for r in settings.FILE_ROOTS]
    assert not any(secret in str(p) for root in roots if root.exists() for p in root.rglob("*"))


def test_a_publish_stage_with_an_unsafe_location_cannot_be_saved():
    from pipelines.models import PipelineStage
    from pipelines.tests.factories import PipelineFactory

    stage = PipelineFactory().stages.get(kind="publish")
    for bad in [SETTINGS_WALK, "out/{secret}.jsonl", "out/{dataset!r}.jsonl", "out/{version:>999}.jsonl"]:
        stage.config = {"location": bad}
        with pytest.raises(ValidationError) as info:
            stage.full_clean()
        assert "$.location" in str(info.value)
    assert PipelineStage.objects.get(pk=stage.pk).config == {}


def test_a_run_has_at_most_one_version_and_its_output_version_is_never_overwritten(operator_user):
    from django.db import IntegrityError, transaction

    from tasks.models import TaskRun

    run, lot, data = _reviewed_run(operator_user, rejects=0)
    version = publish_run(run=run, actor=operator_user, chunks=iter([data]))
    # The database refuses a second live version of the run, whoever tries.
    with pytest.raises(IntegrityError), transaction.atomic():
        DatasetVersion.objects.create(
            dataset=version.dataset, version=version.version + 1, status="building", run_id=run.pk
        )
    # A publish that finds the run's output version set publishes nothing more.
    TaskRun.objects.filter(pk=run.pk).update(output_version=None)
    again = publish_run(run=run, actor=operator_user, chunks=iter([data]))
    assert again.pk == version.pk
    assert DatasetVersion.objects.filter(run_id=run.pk).count() == 1


def test_a_dead_attempts_building_version_is_taken_over_or_reaped_with_its_files(operator_user):
    from django.utils import timezone

    from tasks.choices import RunStatus
    from tasks.models import TaskRun
    from tasks.publish import publish_debris_reap

    run, lot, data = _reviewed_run(operator_user, rejects=0)
    dataset = run.pipeline.output_dataset
    # What a SIGKILL between the rename and the commit leaves: a BUILDING row, its final file, a temp file.
    dead = DatasetVersion.objects.create(
        dataset=dataset,
        version=1,
        status="building",
        run_id=run.pk,
        writer="batch:00000000-0000-0000-0000-000000000001:1",
    )
    dead.location = publish_module.version_location(dataset, None, 1, run.pk, "jsonl")
    dead.save()
    final = _published_file(dead)
    final.parent.mkdir(parents=True, exist_ok=True)
    final.write_text('{"id": 1}\n')
    temp = final.parent / f".{final.name}.v{dead.pk}-batch-x-1.tmp"
    temp.write_text('{"id"')
    # A live run: the reaper leaves the row to the run's next publish attempt (same number, no gap).
    TaskRun.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING)
    assert publish_debris_reap(now=timezone.now()) == 0 and final.exists()
    version = publish_run(run=run, actor=operator_user, chunks=iter([data]))
    assert (version.pk, version.version, version.status) == (dead.pk, 1, "published")
    assert not temp.exists() and sorted(p.name for p in final.parent.iterdir()) == [final.name]
    assert final.read_text().count("\n") == 60

    # A stopped run: the reaper removes the files and fails the row.
    run2, _lot, _data = _reviewed_run(operator_user, rejects=0)
    TaskRun.objects.filter(pk=run2.pk).update(status=RunStatus.CRASHED)
    left = DatasetVersion.objects.create(
        dataset=run2.pipeline.output_dataset, version=2, status="building", run_id=run2.pk, writer="batch:0:1"
    )
    left.location = publish_module.version_location(left.dataset, None, 2, run2.pk, "jsonl")
    left.save()
    final2 = _published_file(left)
    final2.parent.mkdir(parents=True, exist_ok=True)
    final2.write_text("{}\n")
    assert publish_debris_reap(now=timezone.now()) == 1
    left.refresh_from_db()
    assert left.status == "failed" and not final2.exists()
