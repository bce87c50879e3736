"""Fusion of consecutive per-record CPU stages: same counters, quarantine and output as unfused; crash-safe."""

from datetime import timedelta

import pytest
from django.utils import timezone

from tasks import engine
from tasks.choices import BatchStatus, RunStatus, StageRunStatus
from tasks.models import Batch, QuarantinedRecord, StageRun
from tasks.services import reap, run_start
from tasks.tests import kinds_for_tests
from tasks.tests.factories import make_pipeline, make_records, published, reference_output

pytestmark = pytest.mark.django_db

kinds_for_tests.register()

FUSED_STAGES = [
    ("clean", "clean", {"steps": [{"op": "normalize_whitespace"}, {"op": "strip_html"}]}),
    ("filter", "filter", {"on_fail": "quarantine", "rules": [{"type": "length", "field": "text", "min": 8}]}),
    ("filter2", "filter", {"rules": [{"type": "length", "field": "text", "min": 12}]}),
    ("publish", "publish", {}),
]
COUNTERS = ("records_in", "records_out", "records_filtered", "records_failed", "batches_done", "total_batches")


def _stage_counters(run) -> list[tuple]:
    return [
        (s.key, s.status, *(getattr(s, f) for f in COUNTERS))
        for s in StageRun.objects.filter(run=run).order_by("position")
    ]


def _run(doorbell, file_root, name: str, records):
    pipeline = make_pipeline(file_root, records=records, stages=FUSED_STAGES, batch_size=64, name=name)
    run = run_start(pipeline=pipeline, actor=None)
    doorbell.drain()
    run.refresh_from_db()
    return run


@pytest.mark.parametrize("planned", [True, False], ids=["planned-reads", "chained-reads"])
def test_a_fused_run_counts_exactly_like_an_unfused_run(doorbell, file_root, monkeypatch, planned):
    monkeypatch.setattr(engine, "PLANNED_READS_ENABLED", planned)
    records = make_records(300)
    fused = _run(doorbell, file_root, "fused", records)
    monkeypatch.setattr(engine, "FUSION_ENABLED", False)
    plain = _run(doorbell, file_root, "plain", records)
    assert fused.status == plain.status == RunStatus.SUCCEEDED
    assert _stage_counters(fused) == _stage_counters(plain)
    for f in ("records_in", "records_out", "records_filtered", "records_failed"):
        assert getattr(fused, f) == getattr(plain, f)
    assert published(fused) == published(plain) == reference_output(records, FUSED_STAGES)
    # Quarantine is recorded on the stage that quarantined, per batch, in both modes.
    for run in (fused, plain):
        filt = StageRun.objects.get(run=run, key="filter")
        assert filt.records_failed > 0
        assert QuarantinedRecord.objects.filter(stage_run=filt).count() == filt.records_failed
    # Planned: each read batch heads the unit and clean, filter and filter2 are born succeeded inside
    # it. Chained: filter and filter2 are born inside the clean batch, the read batches handed their
    # chunk over in memory. Either way only the unit's last stage wrote a workspace file.
    for key in ("clean", "filter", "filter2") if planned else ("filter", "filter2"):
        stage = StageRun.objects.get(run=fused, key=key)
        assert not Batch.objects.filter(stage_run=stage).exclude(input_ref__has_key="fused_into").exists()
    if not planned:
        clean = StageRun.objects.get(run=fused, key="clean")
        assert not Batch.objects.filter(stage_run=clean).exclude(input_ref__has_key="reread").exists()
    read = StageRun.objects.get(run=fused, key="read")
    # 300 records in chunks of 64: planned reads know the 5 chunks; chained ones end on an empty 6th.
    assert (read.total_batches, read.batches_done) == ((5, 5) if planned else (6, 6))
    assert not Batch.objects.filter(stage_run=read).exclude(output_ref="").exists()
    last = StageRun.objects.get(run=fused, key="filter2")
    assert not Batch.objects.filter(stage_run=last, status=BatchStatus.SUCCEEDED, output_ref="").exists()


def test_a_fused_stage_that_raises_fails_as_its_own_batch(doorbell, file_root):
    stages = [
        ("clean", "clean", {"steps": [{"op": "normalize_whitespace"}]}),
        ("boom", "test_fail", {"fail_batches": [0, 1]}),
        ("publish", "publish", {}),
    ]
    pipeline = make_pipeline(file_root, records=make_records(100), stages=stages, batch_size=50, max_batch_attempts=2)
    run = run_start(pipeline=pipeline, actor=None)
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    boom = StageRun.objects.get(run=run, key="boom")
    clean = StageRun.objects.get(run=run, key="clean")
    assert boom.status == StageRunStatus.FAILED and boom.last_error
    assert clean.records_in == 100 and clean.records_failed == 0
    assert Batch.objects.filter(stage_run=boom, status=BatchStatus.FAILED, failures=2).exists()


class _Killed(BaseException):
    """Stands in for SIGKILL: escapes every handler, so nothing of the batch commits."""


def test_a_crash_mid_fused_batch_is_recomputed_without_duplicates(doorbell, file_root, monkeypatch):
    monkeypatch.setattr(engine, "PLANNED_READS_ENABLED", False)  # the chained reads of unsplittable sources
    records = make_records(300)
    pipeline = make_pipeline(file_root, records=records, stages=FUSED_STAGES, batch_size=64, name="crash")
    run = run_start(pipeline=pipeline, actor=None)
    doorbell.drain(limit=1)  # read 0, then clean 0 (fused with filter, filter2) committed; read 1 is queued
    real = engine._do_per_record
    calls = {"n": 0}

    def dies_in_filter2(spec, stage, *args, **kwargs):
        if stage.key == "filter2":
            calls["n"] += 1
            raise _Killed()
        return real(spec, stage, *args, **kwargs)

    monkeypatch.setattr(engine, "_do_per_record", dies_in_filter2)
    with pytest.raises(_Killed):
        doorbell.drain(limit=1)  # read 1 commits; clean 1 (chained, fused) dies in filter2
    assert calls["n"] == 1
    monkeypatch.setattr(engine, "_do_per_record", real)
    # The unit in flight is lost whole: clean 1 still runs under the dead lease, no fused rows from it.
    clean1 = Batch.objects.get(stage_run__run=run, stage_run__key="clean", index=1)
    assert clean1.status == BatchStatus.RUNNING and "reread" in clean1.input_ref
    assert not Batch.objects.filter(stage_run__run=run, index=1, stage_run__key="filter").exists()
    counts = reap(now=timezone.now() + timedelta(seconds=3600))
    assert counts["expired"] == 1
    doorbell.drain(duplicate=True)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert published(run) == reference_output(records, FUSED_STAGES)
    assert run.records_in == 300
    for s in StageRun.objects.filter(run=run).exclude(kind="publish"):
        assert s.records_in == s.records_out + s.records_filtered + s.records_failed
        assert s.batches_done == Batch.objects.filter(stage_run=s, status=BatchStatus.SUCCEEDED).count()
    filt = StageRun.objects.get(run=run, key="filter")
    assert QuarantinedRecord.objects.filter(stage_run=filt).count() == filt.records_failed


def test_a_crash_mid_planned_read_unit_is_recomputed_without_duplicates(doorbell, file_root, monkeypatch):
    records = make_records(300)
    pipeline = make_pipeline(file_root, records=records, stages=FUSED_STAGES, batch_size=64, name="crash-planned")
    run = run_start(pipeline=pipeline, actor=None)
    doorbell.drain(limit=1)  # read 0 plans reads 1-4 (queued), then runs its unit through filter2
    read = StageRun.objects.get(run=run, key="read")
    assert read.total_batches == 5 and Batch.objects.filter(stage_run=read, status=BatchStatus.QUEUED).count() == 4
    real = engine._do_per_record

    def dies_in_filter2(spec, stage, *args, **kwargs):
        if stage.key == "filter2":
            raise _Killed()
        return real(spec, stage, *args, **kwargs)

    monkeypatch.setattr(engine, "_do_per_record", dies_in_filter2)
    with pytest.raises(_Killed):
        doorbell.drain(limit=1)  # read 1's unit dies in filter2
    monkeypatch.setattr(engine, "_do_per_record", real)
    read1 = Batch.objects.get(stage_run=read, index=1)
    assert read1.status == BatchStatus.RUNNING and read1.input_ref.get("planned")
    assert not Batch.objects.filter(stage_run__run=run, index=1).exclude(stage_run=read).exists()
    assert reap(now=timezone.now() + timedelta(seconds=3600))["expired"] == 1
    doorbell.drain(duplicate=True)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert published(run) == reference_output(records, FUSED_STAGES)
    assert run.records_in == 300
    read.refresh_from_db()
    assert (read.total_batches, read.batches_done) == (5, 5)
    for s in StageRun.objects.filter(run=run).exclude(kind="publish"):
        assert s.records_in == s.records_out + s.records_filtered + s.records_failed
        assert s.batches_done == Batch.objects.filter(stage_run=s, status=BatchStatus.SUCCEEDED).count()


def test_read_0_retried_after_its_plan_committed_does_not_plan_again(doorbell, file_root, monkeypatch):
    records = make_records(300)
    pipeline = make_pipeline(file_root, records=records, stages=FUSED_STAGES, batch_size=64, name="replan")
    run = run_start(pipeline=pipeline, actor=None)
    real = engine._batch_commit

    def dies(*args, **kwargs):
        raise _Killed()

    # Read 0 probes its unit on its own chunk, plans the rest (its own transaction), then dies before
    # committing its unit.
    monkeypatch.setattr(engine, "_batch_commit", dies)
    with pytest.raises(_Killed):
        doorbell.drain(limit=1)
    monkeypatch.setattr(engine, "_batch_commit", real)
    read = StageRun.objects.get(run=run, key="read")
    assert Batch.objects.filter(stage_run=read).count() == 5
    # Its chunk's size is recorded with the plan, so the retry reads the same chunk.
    assert Batch.objects.get(stage_run=read, index=0).input_ref == {"start": None, "planned": True, "size": 64}
    assert reap(now=timezone.now() + timedelta(seconds=3600))["expired"] == 1
    doorbell.drain(duplicate=True)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    assert Batch.objects.filter(stage_run=read).count() == 5  # no second plan
    assert published(run) == reference_output(records, FUSED_STAGES)


def test_an_input_of_more_chunks_than_a_plan_may_create_is_read_in_a_chain(doorbell, file_root, monkeypatch):
    monkeypatch.setattr(engine, "PLAN_MAX_BATCHES", 3)
    records = make_records(300)
    pipeline = make_pipeline(file_root, records=records, stages=FUSED_STAGES, batch_size=64, name="big")
    run = run_start(pipeline=pipeline, actor=None)
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    read = StageRun.objects.get(run=run, key="read")
    assert (read.total_batches, read.batches_done) == (6, 6)  # chained: 5 chunks and the empty end
    assert not Batch.objects.filter(stage_run=read, input_ref__has_key="planned").exists()
    assert published(run) == reference_output(records, FUSED_STAGES)
