"""Engine behaviour step by step (in-process doorbell): streaming, fencing, counts, failure, cancel, resume."""

import pytest
from django.utils import translation

from tasks import engine
from tasks.choices import BatchStatus, RunStatus, StageRunStatus
from tasks.models import Batch, QuarantinedRecord, StageRun
from tasks.reasons import run_reason
from tasks.services import run_start
from tasks.tests import kinds_for_tests
from tasks.tests.factories import STANDARD_STAGES, make_pipeline, make_records, published, reference_output

pytestmark = pytest.mark.django_db

kinds_for_tests.register()


@pytest.mark.parametrize("planned", [True, False], ids=["planned-reads", "chained-reads"])
def test_it_runs_a_pipeline_end_to_end(doorbell, file_root, monkeypatch, planned):
    monkeypatch.setattr(engine, "PLANNED_READS_ENABLED", planned)
    records = make_records(1050)
    pipeline = make_pipeline(file_root, records=records, batch_size=100)
    run = run_start(pipeline=pipeline, actor=None)
    results = doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, (run.status_reason, results)
    expected = reference_output(records)
    assert published(run) == expected
    assert run.records_in == 1050
    assert run.records_out == len(expected)
    stages = list(StageRun.objects.filter(run=run).order_by("position"))
    assert [s.status for s in stages] == [StageRunStatus.SUCCEEDED] * 5
    for s in stages:
        assert s.records_in == s.records_out + s.records_filtered + s.records_failed
    # 11 data batches (planned up front); chained reads add the empty end-of-input batch. Downstream
    # per-record stages get one per data batch.
    assert (stages[0].total_batches, stages[0].batches_done) == ((11, 11) if planned else (12, 12))
    assert stages[1].batches_done == 11
    for b in Batch.objects.filter(stage_run__run=run):
        assert b.records_in == b.records_out + b.records_filtered + b.records_failed


def test_it_ignores_a_duplicate_delivery_of_every_message(doorbell, file_root):
    records = make_records(500)
    pipeline = make_pipeline(file_root, records=records, batch_size=50)
    run = run_start(pipeline=pipeline, actor=None)
    results = doorbell.drain(duplicate=True)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert results.count("skipped") == len(results) // 2
    assert published(run) == reference_output(records)
    assert run.records_in == 500


def test_a_stale_attempt_cannot_commit(doorbell, file_root):
    pipeline = make_pipeline(file_root, records=make_records(50), batch_size=50)
    run = run_start(pipeline=pipeline, actor=None)
    batch_id = doorbell.sent[0][0]
    stale = engine.batch_claim(batch_id=batch_id, owner="old:1")
    # The lease is taken over (the reaper re-queued it; another worker claimed it).
    Batch.objects.filter(pk=batch_id).update(status=BatchStatus.QUEUED)
    fresh = engine.batch_claim(batch_id=batch_id, owner="new:2")
    assert fresh.attempt == stale.attempt + 1
    spec = engine.run_spec(run.pk)
    outcome = engine.Outcome(records_in=1, records_out=1, output_ref="x")
    with pytest.raises(engine.LeaseLost):
        engine._batch_commit(spec, spec.stages[0], stale, outcome, 1)
    b = Batch.objects.get(pk=batch_id)
    assert b.status == BatchStatus.RUNNING and b.lease_owner == "new:2" and b.canonical_attempt is None


def test_the_same_worker_cannot_commit_an_attempt_it_lost(doorbell, file_root):
    """The fence is the attempt, not the owner: one host:pid that lost its lease and re-claimed the batch
    (the reaper re-queued it, the same process took it again) cannot commit the old attempt."""
    from datetime import timedelta

    from django.utils import timezone

    from tasks.services import reap

    pipeline = make_pipeline(file_root, records=make_records(50), batch_size=50)
    run = run_start(pipeline=pipeline, actor=None)
    batch_id = doorbell.sent[0][0]
    stale = engine.batch_claim(batch_id=batch_id, owner="host-a:4242")
    assert reap(now=timezone.now() + timedelta(seconds=3600))["expired"] == 1
    fresh = engine.batch_claim(batch_id=batch_id, owner="host-a:4242")
    assert fresh is not None and fresh.attempt == stale.attempt + 1 and fresh.lease_owner == stale.lease_owner
    # The old attempt's lease keeper sees the loss instead of renewing the new attempt's lease.
    keeper = engine.LeaseKeeper(stale, run.pk, 30)
    before = Batch.objects.get(pk=batch_id).lease_expires_at
    keeper.renew()
    assert keeper.lost and Batch.objects.get(pk=batch_id).lease_expires_at == before
    spec = engine.run_spec(run.pk)
    outcome = engine.Outcome(records_in=1, records_out=1, output_ref="stale-output")
    with pytest.raises(engine.LeaseLost):
        engine._batch_commit(spec, spec.stages[0], stale, outcome, 1)
    b = Batch.objects.get(pk=batch_id)
    assert b.status == BatchStatus.RUNNING and b.attempt == fresh.attempt and b.canonical_attempt is None
    assert b.output_ref != "stale-output"
    # The current attempt still commits.
    engine._batch_commit(spec, spec.stages[0], fresh, engine.Outcome(records_in=1, records_out=1, output_ref="x"), 1)
    b.refresh_from_db()
    assert b.status == BatchStatus.SUCCEEDED and b.canonical_attempt == fresh.attempt


def test_counts_add_up_with_quarantine(doorbell, file_root):
    records = make_records(300)
    stages = [
        ("filter", "filter", {"on_fail": "quarantine", "rules": [{"type": "length", "field": "text", "min": 8}]}),
        ("publish", "publish", {}),
    ]
    pipeline = make_pipeline(file_root, records=records, stages=stages, batch_size=64)
    run = run_start(pipeline=pipeline, actor=None)
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    filt = StageRun.objects.get(run=run, key="filter")
    assert filt.records_failed > 0
    assert QuarantinedRecord.objects.filter(stage_run=filt).count() == filt.records_failed
    assert run.records_failed == filt.records_failed
    assert filt.records_in == 300 == filt.records_out + filt.records_filtered + filt.records_failed
    q = QuarantinedRecord.objects.filter(stage_run=filt).first()
    assert q.reason and q.record is not None


def test_a_failing_stage_fails_the_run_after_its_budget_and_retry_completes_it(doorbell, file_root, tmp_path):
    switch = tmp_path / "fail-on"
    switch.touch()
    records = make_records(200, unique=True)
    stages = [("flaky", "test_fail", {"fail_batches": [1], "switch": str(switch)}), ("publish", "publish", {})]
    pipeline = make_pipeline(file_root, records=records, stages=stages, batch_size=50, max_batch_attempts=2)
    run = run_start(pipeline=pipeline, actor=None)
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert "flaky" in run.status_reason and "boom" in run.status_reason
    # The reason is a code too, so each reader sees it in their language (tasks/reasons.py).
    assert run.status_code == "batch_failed" and run.status_params["stage"] == "flaky"
    with translation.override("zh-hans"):
        assert run_reason(run).startswith("阶段 flaky 的批次 1 在 2 次尝试后失败")
    flaky = StageRun.objects.get(run=run, key="flaky")
    assert flaky.status == StageRunStatus.FAILED
    bad = Batch.objects.get(stage_run=flaky, index=1)
    assert bad.status == BatchStatus.FAILED and bad.failures == 2
    done_before = set(Batch.objects.filter(stage_run=flaky, status=BatchStatus.SUCCEEDED).values_list("pk", "attempt"))

    from tasks.services import run_retry

    switch.unlink()
    run_retry(run=run, actor=None, stage_run=flaky)
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    assert published(run) == records
    # Nothing canonical was recomputed.
    assert done_before <= set(Batch.objects.filter(stage_run=flaky).values_list("pk", "attempt"))


def test_cancel_then_resume_finishes_without_recomputing(doorbell, file_root):
    from tasks.services import run_cancel, run_resume

    records = make_records(400)
    pipeline = make_pipeline(file_root, records=records, batch_size=50)
    run = run_start(pipeline=pipeline, actor=None)
    doorbell.drain(limit=6)
    run_cancel(run=run, actor=None)
    assert run.status == RunStatus.CANCELLED
    assert (run.status_code, run.status_params) == ("cancelled_by", {"who": "system"})
    with translation.override("zh-hans"):
        assert run_reason(run) == "已被 system 取消。"
    leftovers = doorbell.drain()
    assert leftovers and all(r == "skipped" for r in leftovers)
    done = set(Batch.objects.filter(stage_run__run=run, status=BatchStatus.SUCCEEDED).values_list("pk", "attempt"))
    assert done
    run_resume(run=run, actor=None)
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    assert published(run) == reference_output(records)
    assert done <= set(Batch.objects.filter(stage_run__run=run).values_list("pk", "attempt"))


def test_a_waiting_batch_keeps_its_budget_and_the_reaper_requeues_it(doorbell, file_root, tmp_path):
    from datetime import timedelta

    from django.utils import timezone

    from tasks.services import reap

    switch = tmp_path / "breaker-open"
    switch.touch()
    records = make_records(100, unique=True)
    stages = [("model", "test_wait", {"switch": str(switch), "retry_after": 5}), ("publish", "publish", {})]
    pipeline = make_pipeline(file_root, records=records, stages=stages, batch_size=50, max_batch_attempts=1)
    run = run_start(pipeline=pipeline, actor=None)
    doorbell.drain()
    run.refresh_from_db()
    model = StageRun.objects.get(run=run, key="model")
    assert run.status == RunStatus.WAITING and model.status == StageRunStatus.WAITING
    waiting = Batch.objects.filter(stage_run=model, status=BatchStatus.WAITING)
    assert waiting.count() == 2 and all(b.failures == 0 for b in waiting)
    assert reap()["woken"] == 0  # not yet
    switch.unlink()
    assert reap(now=timezone.now() + timedelta(seconds=6))["woken"] == 2
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert published(run) == records


def test_a_waiting_run_stays_waiting_while_its_batches_re_check(doorbell, file_root, tmp_path):
    """Each re-check of a still-closed gate used to flip the run and stage Waiting -> Running -> Waiting."""
    from datetime import timedelta

    from django.utils import timezone

    from tasks.services import reap

    switch = tmp_path / "breaker-open"
    switch.touch()
    records = make_records(100, unique=True)
    stages = [("model", "test_wait", {"switch": str(switch), "retry_after": 5}), ("publish", "publish", {})]
    pipeline = make_pipeline(file_root, records=records, stages=stages, batch_size=50)
    run = run_start(pipeline=pipeline, actor=None)
    doorbell.drain()
    model = StageRun.objects.get(run=run, key="model")
    seen = []

    def observe():
        run.refresh_from_db()
        model.refresh_from_db()
        seen.append((run.status, model.status))

    later = timezone.now()
    for _ in range(3):  # three re-checks, nothing changes
        later += timedelta(seconds=6)
        assert reap(now=later)["woken"] == 2
        observe()
        doorbell.drain()
        observe()
    assert set(seen) == {(RunStatus.WAITING, StageRunStatus.WAITING)}, seen
    switch.unlink()
    assert reap(now=later + timedelta(seconds=6))["woken"] == 2
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert published(run) == records


def test_a_run_waiting_on_one_stage_is_running_again_once_a_batch_of_it_commits(doorbell, file_root, tmp_path):
    from datetime import timedelta

    from django.utils import timezone

    from tasks.services import reap

    switch = tmp_path / "breaker-open"
    switch.touch()
    records = make_records(100, unique=True)
    stages = [("model", "test_wait", {"switch": str(switch), "retry_after": 5}), ("publish", "publish", {})]
    pipeline = make_pipeline(file_root, records=records, stages=stages, batch_size=50)
    run = run_start(pipeline=pipeline, actor=None)
    doorbell.drain()
    model = StageRun.objects.get(run=run, key="model")
    waiting = list(Batch.objects.filter(stage_run=model, status=BatchStatus.WAITING).order_by("index"))
    switch.unlink()
    # Only the first batch's wait is over: it commits, the stage runs again, the run follows.
    Batch.objects.filter(pk=waiting[1].pk).update(not_before=timezone.now() + timedelta(days=1))
    assert reap(now=timezone.now() + timedelta(seconds=6))["woken"] == 1
    doorbell.drain()
    model.refresh_from_db()
    assert model.status == StageRunStatus.RUNNING
    reap()
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING


def test_the_reaper_requeues_an_expired_lease_and_crashes_after_the_budget(doorbell, file_root):
    from datetime import timedelta

    from django.utils import timezone

    from tasks.services import reap

    pipeline = make_pipeline(file_root, records=make_records(60), batch_size=50)
    run = run_start(pipeline=pipeline, actor=None)
    batch_id = doorbell.sent.pop(0)[0]
    for i in range(3):
        assert engine.batch_claim(batch_id=batch_id, owner=f"dead:{i}") is not None
        counts = reap(now=timezone.now() + timedelta(seconds=3600))
        assert counts["expired"] == 1
        # A duplicate beat changes nothing.
        assert reap(now=timezone.now() + timedelta(seconds=3600))["expired"] == 0
    b = Batch.objects.get(pk=batch_id)
    run.refresh_from_db()
    assert b.status == BatchStatus.CRASHED and b.crashes == 3 and b.failures == 0
    assert run.status == RunStatus.CRASHED and "crashed" in run.status_reason
    # The reason names the stage and the records of the batch that took the workers down.
    first_ids = [str(r["id"]) for r in make_records(60)[:10]]
    assert run.status_code == "batch_crashed" and run.status_params["stages"] == "read"
    assert run.status_params["records"].startswith(", ".join(first_ids)) and "50 records" in run.status_reason

    # Resume gives the poison batch one more attempt, not a fresh budget of three crashes.
    from tasks.services import run_resume, run_retry

    run_resume(run=run, actor=None)
    assert {item[0] for item in doorbell.sent} == {batch_id}
    doorbell.sent.clear()
    assert engine.batch_claim(batch_id=batch_id, owner="dead:after-resume") is not None
    reap(now=timezone.now() + timedelta(seconds=3600))
    run.refresh_from_db()
    assert run.status == RunStatus.CRASHED and Batch.objects.get(pk=batch_id).crashes == 4

    # Retry is the operator's decision to grant a fresh budget.
    run_retry(run=run, actor=None)
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert published(run) == reference_output(make_records(60))


def test_it_refuses_to_start_in_a_paused_scope(doorbell, file_root):
    from django.core.exceptions import ValidationError

    pipeline = make_pipeline(file_root, records=make_records(10))
    pipeline.runs_paused = True
    pipeline.paused_reason = "token budget exceeded"
    pipeline.save()
    with pytest.raises(ValidationError) as err:
        run_start(pipeline=pipeline, actor=None)
    assert "token budget exceeded" in str(err.value)
    pipeline.runs_paused = False
    pipeline.save()
    pipeline.project.runs_paused = True
    pipeline.project.paused_reason = "monthly budget"
    pipeline.project.save()
    with pytest.raises(ValidationError) as err:
        run_start(pipeline=pipeline, actor=None)
    assert "monthly budget" in str(err.value)


def test_the_same_idempotency_key_returns_the_same_run(doorbell, file_root):
    from tasks.services import IdempotencyConflict

    pipeline = make_pipeline(file_root, records=make_records(10))
    a = run_start(pipeline=pipeline, actor=None, idempotency_key="k-1")
    b = run_start(pipeline=pipeline, actor=None, idempotency_key="k-1")
    assert a.pk == b.pk
    assert len(doorbell.sent) == 1
    with pytest.raises(IdempotencyConflict):
        run_start(pipeline=pipeline, actor=None, idempotency_key="k-1", parameters={"x": 1})


def test_an_empty_input_succeeds_with_an_empty_output(doorbell, file_root):
    pipeline = make_pipeline(file_root, records=[], stages=STANDARD_STAGES)
    run = run_start(pipeline=pipeline, actor=None)
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert published(run) == []


def _drain_until_publish(doorbell, run):
    """Run every batch except the publish unit; return the publish unit's message."""
    publish = StageRun.objects.get(run=run, kind="publish")
    held = []
    while doorbell.sent:
        item = doorbell.sent.pop(0)
        if Batch.objects.filter(pk=item[0], stage_run=publish).exists():
            held.append(item)
            continue
        engine.batch_execute(batch_id=item[0], owner="test:1")
    assert len(held) == 1
    return held


@pytest.mark.parametrize("tamper", ["lost-output", "miscounted"])
def test_it_fails_a_publish_that_reads_other_than_the_stage_before_recorded(doorbell, file_root, tamper):
    from catalog.models import DatasetVersion

    records = make_records(300)
    stages = [("clean", "clean", {"steps": [{"op": "strip_html"}]}), ("publish", "publish", {})]
    pipeline = make_pipeline(file_root, records=records, stages=stages, batch_size=100, max_batch_attempts=1)
    run = run_start(pipeline=pipeline, actor=None)
    held = _drain_until_publish(doorbell, run)
    clean = StageRun.objects.get(run=run, key="clean")
    if tamper == "lost-output":
        # What the demo's seeded live run looked like to the engine: counters, but no batch outputs.
        Batch.objects.filter(stage_run=clean).update(output_ref="")
    else:
        StageRun.objects.filter(pk=clean.pk).update(records_out=clean.records_out + 1)
    doorbell.sent.extend(held)
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert "publish" in run.status_reason and "clean" in run.status_reason and "recorded" in run.status_reason
    assert not DatasetVersion.objects.filter(run_id=run.pk, status="published").exists()
    assert run.output_version_id is None


def test_it_fails_a_batch_whose_input_is_not_what_the_stage_before_recorded(doorbell, file_root, monkeypatch):
    from tasks import workspace

    monkeypatch.setattr(engine, "FUSION_ENABLED", False)
    pipeline = make_pipeline(file_root, records=make_records(200), batch_size=100, max_batch_attempts=1)
    run = run_start(pipeline=pipeline, actor=None)
    engine.batch_execute(batch_id=doorbell.sent.pop(0)[0], owner="test:1", chain=False)  # read batch 0
    filter_batch = Batch.objects.get(stage_run__run=run, stage_run__key="filter", index=0)
    path = workspace.resolve(filter_batch.input_ref["path"])
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-3]))  # three records lost
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert "read 97 records for batch 0" in run.status_reason and "recorded 100" in run.status_reason


def test_progress_gives_no_rate_for_a_stage_that_finished_within_one_clock_tick(doorbell, file_root):
    """Fused followers commit all their batches in one transaction: started_at == finished_at."""
    from datetime import timedelta

    from tasks.selectors import RATE_MIN_SECONDS, run_progress

    pipeline = make_pipeline(file_root, records=make_records(400), batch_size=400)
    run = run_start(pipeline=pipeline, actor=None)
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    stage = StageRun.objects.filter(run=run, records_in__gt=0).order_by("position").last()
    StageRun.objects.filter(pk=stage.pk).update(finished_at=stage.started_at)
    progress = run_progress(run)
    row = next(s for s in progress["stages"] if s["id"] == str(stage.pk))
    assert row["records_per_second"] is None  # was records_in / 1 ms = 400,000/s
    # Over a measurable span the rate is the plain quotient.
    StageRun.objects.filter(pk=stage.pk).update(finished_at=stage.started_at + timedelta(seconds=4))
    row = next(s for s in run_progress(run)["stages"] if s["id"] == str(stage.pk))
    assert row["records_per_second"] == round(stage.records_in / 4, 1)
    assert RATE_MIN_SECONDS <= 4
