"""The `wasm` kind in real pipeline runs: version fixed at run start, hot reload, a failing batch stays its own."""

from __future__ import annotations

import pytest

from tasks.choices import BatchStatus, RunStatus
from tasks.models import Batch, QuarantinedRecord, StageRun
from tasks.services import RunRefused, run_start
from tasks.tests.factories import make_pipeline, make_records, published
from wasmstages import runtime
from wasmstages.services import wasm_module_upload

from . import modules

pytestmark = pytest.mark.django_db


def _stage(run, key="wasm") -> StageRun:
    return StageRun.objects.get(run=run, key=key)


def test_a_run_keeps_its_version_while_a_new_one_is_uploaded_and_the_next_run_takes_it(doorbell, file_root):
    v1 = wasm_module_upload(name="tag", content=modules.binary(modules.ECHO), actor=None)
    records = make_records(60, unique=True)
    stages = [("wasm", "wasm", {"module": "tag"}), ("publish", "publish", {})]
    pipeline = make_pipeline(file_root, records=records, stages=stages, batch_size=10, name="hot")
    first = run_start(pipeline=pipeline, actor=None)
    doorbell.drain(limit=2)
    first.refresh_from_db()
    assert first.status == RunStatus.RUNNING
    assert _stage(first).config == {"module": "tag", "version": 1, "sha256": v1.sha256}
    assert first.pipeline_snapshot["stages"][1]["config"]["version"] == 1

    v2 = wasm_module_upload(name="tag", content=modules.binary(modules.VERDICTS), actor=None)
    second = run_start(pipeline=pipeline, actor=None)
    assert _stage(second).config["version"] == 2 and _stage(second).config["sha256"] == v2.sha256
    doorbell.drain()
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.status == second.status == RunStatus.SUCCEEDED
    # The first run finished on version 1 (echo) although version 2 was uploaded while it ran.
    assert published(first) == records
    stage = _stage(second)
    assert (stage.records_out, stage.records_filtered, stage.records_failed) == (0, 30, 30)
    reasons = set(QuarantinedRecord.objects.filter(stage_run=stage).values_list("code", "reason"))
    assert reasons == {("odd", "looks wrong")}
    # Both versions compiled in this one process, no restart.
    assert {v1.sha256, v2.sha256} <= set(runtime.cached_digests())


def test_a_pinned_version_stays_pinned_after_newer_uploads(doorbell, file_root):
    wasm_module_upload(name="tag", content=modules.binary(modules.ECHO), actor=None)
    wasm_module_upload(name="tag", content=modules.binary(modules.VERDICTS), actor=None)
    records = make_records(20, unique=True)
    stages = [("wasm", "wasm", {"module": "tag", "version": 1}), ("publish", "publish", {})]
    run = run_start(pipeline=make_pipeline(file_root, records=records, stages=stages, name="pinned"), actor=None)
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED and published(run) == records


def test_a_trapping_batch_fails_with_the_module_version_and_other_batches_succeed(doorbell, file_root):
    wasm_module_upload(name="poison", content=modules.binary(modules.POISONED), actor=None)
    records = make_records(50, unique=True)
    records[25]["text"] = "bad record!"
    stages = [("wasm", "wasm", {"module": "poison"}), ("publish", "publish", {})]
    pipeline = make_pipeline(
        file_root, records=records, stages=stages, batch_size=10, name="poison", max_batch_attempts=2
    )
    run = run_start(pipeline=pipeline, actor=None)
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert "poison@1" in run.status_reason and "unreachable" in run.status_reason
    # The run's reason names the record (index in its batch and id), found by re-running parts of the batch.
    assert "record 5 (id 25)" in run.status_reason and "bad record!" in run.status_reason
    failed = Batch.objects.filter(stage_run__run=run, status=BatchStatus.FAILED)
    assert failed.count() == 1 and failed.get().failures == 2
    assert "record 5 (id 25)" in failed.get().error
    done = Batch.objects.filter(stage_run__run=run, stage_run__key="read", status=BatchStatus.SUCCEEDED).count()
    assert done >= 4  # the reads of the other batches went through, whose wasm stage ran fused with them


def test_a_run_is_refused_when_its_module_is_gone_from_the_pin(doorbell, file_root):
    row = wasm_module_upload(name="tag", content=modules.binary(modules.ECHO), actor=None)
    stages = [("wasm", "wasm", {"module": "tag", "version": 1, "sha256": "0" * 64}), ("publish", "publish", {})]
    pipeline = make_pipeline(file_root, records=make_records(5), stages=stages, name="mismatch")
    with pytest.raises(RunRefused) as err:
        run_start(pipeline=pipeline, actor=None)
    assert row.sha256 in str(err.value.detail if hasattr(err.value, "detail") else err.value)
