"""Partitioned dedup on real Celery workers: the same output as the one-unit run, and the batch guarantees under
SIGKILL and SIGSTOP past the lease (the DF_TEST_FAULT hook of worker_main.py at `<phase>.written`).

On PostgreSQL + Redis when DATABASE_URL and REDIS_URL are set, else on the embedded default. Waits poll the
database with generous bounds; nothing asserts on time.
"""

import os
import signal

import pytest

from conftest import wait_until
from tasks import engine, workspace
from tasks.choices import BatchStatus, RunStatus
from tasks.models import Batch, StageRun
from tasks.services import run_start
from tasks.tests.conftest import fast_recovery, run_wait, start_victim, stopped
from tasks.tests.factories import (
    STREAMING_STAGES,
    make_pipeline,
    make_records,
    published,
    published_bytes,
    reference_output,
)

pytestmark = [pytest.mark.integration]


def _stages(partitions: int | None = None):
    dedup = {"fields": ["text"]} if partitions is None else {"fields": ["text"], "partitions": partitions}
    return [*STREAMING_STAGES[:-1], ("dedup", "dedup", dedup), STREAMING_STAGES[-1]]


def _dedup_batches(run):
    return Batch.objects.filter(stage_run__run=run, stage_run__kind="dedup")


def _assert_exact_output(run, records, stages):
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    expected = reference_output(records, stages)
    out = published(run)
    assert len(expected) < len(records) and expected  # the input has duplicates (and short records)
    assert out == expected  # same records, same order: nothing lost, nothing twice
    dedup = StageRun.objects.get(run=run, kind="dedup")
    assert dedup.records_in == dedup.records_out + dedup.records_filtered
    assert run.records_out == len(expected)


def test_a_partitioned_dedup_on_two_workers_publishes_the_bytes_of_the_one_unit_run(workers, file_root, monkeypatch):
    records = make_records(4000)
    stages = _stages()  # partitions by default: twice the live workers
    for w in [workers.start(name=f"w{i}") for i in range(2)]:
        workers.wait_ready(w)
    # The one-unit run first: partitioning is decided when a run starts (its snapshot).
    monkeypatch.setattr(engine, "PARTITIONED_ENABLED", False)
    unit_pipeline = make_pipeline(file_root, records=records, stages=stages, batch_size=250, name="unit")
    unit_run = run_wait(run_start(pipeline=unit_pipeline, actor=None), timeout=300)
    assert unit_run.status == RunStatus.SUCCEEDED, (unit_run.status_reason, workers.log_tail())
    assert _dedup_batches(unit_run).count() == 1

    monkeypatch.setattr(engine, "PARTITIONED_ENABLED", True)
    pipeline = make_pipeline(file_root, records=records, stages=stages, batch_size=250, name="parted")
    run = run_wait(run_start(pipeline=pipeline, actor=None), timeout=300)
    assert run.status == RunStatus.SUCCEEDED, (run.status_reason, workers.log_tail())
    _assert_exact_output(run, records, stages)
    assert published_bytes(run) == published_bytes(unit_run)
    plan = StageRun.objects.get(run=run, kind="dedup").result["partitions"]
    assert plan["partitions"] >= 2 and plan["phase"] == "write"
    # The chunk units emitted the keys, so the stage started at its reduce phase (no map batches).
    phases = [b.input_ref["phase"] for b in _dedup_batches(run).order_by("index")]
    assert phases == ["reduce"] * plan["partitions"] + ["write"] * plan["groups"] and plan["maps"] == 0
    # Every worker took part in the global stage (the one unit ran on one of them).
    owners = {o.rsplit(":", 1)[0] for o in _dedup_batches(run).values_list("lease_owner", flat=True)}
    assert len(owners) == 2, owners


def test_a_partition_whose_worker_is_sigkilled_is_redone_with_nothing_lost_or_doubled(workers, file_root, tmp_path):
    fast_recovery()
    records = make_records(3000)
    stages = _stages(partitions=3)
    pipeline = make_pipeline(file_root, records=records, stages=stages, batch_size=200)
    # The victim runs alone up to the reduce phase and hangs holding a reduce batch, its output written.
    victim, faults = start_victim(workers, tmp_path, "reduce.written", "hang")
    run = run_start(pipeline=pipeline, actor=None)
    wait_until(lambda: (faults / "reduce.written.hang").exists(), 180)
    held = _dedup_batches(run).get(status=BatchStatus.RUNNING, input_ref__phase="reduce")
    assert held.lease_owner.startswith("victim@")
    rescuer = workers.start(name="rescuer")
    workers.wait_ready(rescuer)
    workers.kill(victim)
    run_wait(run, timeout=300)
    assert run.status == RunStatus.SUCCEEDED, (run.status_reason, workers.log_tail())
    _assert_exact_output(run, records, stages)
    held.refresh_from_db()
    assert held.status == BatchStatus.SUCCEEDED and held.crashes == 1
    assert held.canonical_attempt == held.attempt > 1 and held.lease_owner.startswith("rescuer@")
    assert held.checkpoint["drops"].endswith(f".{held.canonical_attempt}.drops")


def test_a_partition_worker_stopped_past_its_lease_cannot_commit_when_it_resumes(workers, file_root, tmp_path):
    fast_recovery()
    records = make_records(3000)
    stages = _stages(partitions=2)
    pipeline = make_pipeline(file_root, records=records, stages=stages, batch_size=200)
    victim, faults = start_victim(workers, tmp_path, "reduce.written", "stop")
    run = run_start(pipeline=pipeline, actor=None)
    wait_until(lambda: (faults / "reduce.written.stop").exists() and stopped(victim.pid), 180)
    held = _dedup_batches(run).get(status=BatchStatus.RUNNING, input_ref__phase="reduce")
    stale_attempt = held.attempt
    stale_file = (
        workspace.run_dir(run.pk)
        / str(held.stage_run.position)
        / (f"r{held.input_ref['partition']}.{stale_attempt}.drops")
    )
    assert stale_file.exists()  # the stopped worker wrote its partition's output before it stopped
    rescuer = workers.start(name="rescuer")
    workers.wait_ready(rescuer)
    # The stopped worker renews nothing: its lease expires, the reaper re-queues, the rescuer redoes it.
    run_wait(run, timeout=300)
    assert run.status == RunStatus.SUCCEEDED, (run.status_reason, workers.log_tail())
    os.killpg(victim.pid, signal.SIGCONT)
    wait_until(lambda: (faults / "reduce.written.resumed").exists(), 60)
    # The resumed worker tries to commit its stale attempt: fenced out, it changes nothing.
    wait_until(lambda: "lease_lost" in workers.log_tail(100_000), 60)
    held.refresh_from_db()
    assert held.canonical_attempt > stale_attempt and held.lease_owner.startswith("rescuer@")
    assert held.checkpoint["drops"].endswith(f".{held.canonical_attempt}.drops")
    assert not stale_file.exists()  # the fenced attempt discarded its file
    _assert_exact_output(run, records, stages)
    assert victim.poll() is None  # the resumed worker lives on
