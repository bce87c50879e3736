"""Real Celery workers (subprocesses) against the real broker and a shared database.

On PostgreSQL + Redis when DATABASE_URL/REDIS_URL are set, else on the embedded default (SQLite file +
the SQLite transport). Waits poll the database; nothing here asserts on time.
"""

import os
import subprocess
import sys
from collections import Counter, defaultdict

import pytest
from django.core.management import call_command

from conftest import wait_until
from dataflare_portal.core.config import config_set
from tasks import engine
from tasks.choices import BatchStatus, RunStatus
from tasks.models import Batch, StageRun
from tasks.selectors import workers_overview
from tasks.services import run_start
from tasks.tests import kinds_for_tests
from tasks.tests.conftest import run_wait
from tasks.tests.factories import (
    STANDARD_STAGES,
    checksum,
    make_pipeline,
    make_records,
    published,
    reference_output,
)

pytestmark = [pytest.mark.integration]

kinds_for_tests.register()


def _config(**values):
    for key, value in values.items():
        config_set(key=key, value=value, actor=None)
    engine.engine_settings_forget()


def test_a_real_worker_runs_the_pipeline_end_to_end(workers, file_root):
    records = make_records(3000)
    pipeline = make_pipeline(file_root, records=records, batch_size=250)
    w = workers.start(name="e2e")
    workers.wait_ready(w)
    run = run_start(pipeline=pipeline, actor=None)
    run_wait(run)
    assert run.status == RunStatus.SUCCEEDED, (run.status_reason, workers.log_tail())
    assert published(run) == reference_output(records)
    assert run.records_in == 3000


def test_the_start_requests_id_reaches_the_workers_audit_entries(workers, file_root):
    from dataflare_portal.core.models import AuditLogEntry
    from dataflare_portal.core.requestctx import request_id_var

    pipeline = make_pipeline(file_root, records=make_records(600), batch_size=200)
    w = workers.start(name="rid")
    workers.wait_ready(w)
    token = request_id_var.set("req-start-42")  # as the middleware sets it for the start request
    try:
        run = run_start(pipeline=pipeline, actor=None)
    finally:
        request_id_var.reset(token)
    run_wait(run, reap=False)  # a reaper pass here would send messages without the id
    assert run.status == RunStatus.SUCCEEDED, (run.status_reason, workers.log_tail())
    # Written by the worker at the end of a chain of messages, each carrying the id on.
    published_entry = AuditLogEntry.objects.get(action="publish")
    assert published_entry.request_id == "req-start-42"


def test_a_duplicate_delivery_of_every_message_changes_nothing(workers, file_root):
    records = make_records(2000)
    pipeline = make_pipeline(file_root, records=records, batch_size=100)
    deliveries = workers.tmp_path / "deliveries.log"
    w = workers.start(
        name="dup",
        pool="prefork",
        concurrency=2,
        extra_env={"DF_TEST_DUPLICATE_DELIVERY": "1", "DF_TEST_DELIVERY_LOG": str(deliveries)},
    )
    workers.wait_ready(w)
    single = engine.dispatch
    # The first message (sent by this process) goes twice as well.
    engine.dispatch = lambda items: single([*items, *items])
    try:
        run = run_start(pipeline=pipeline, actor=None)
    finally:
        engine.dispatch = single
    run_wait(run)
    assert run.status == RunStatus.SUCCEEDED, (run.status_reason, workers.log_tail())
    out = published(run)
    assert checksum(out) == checksum(reference_output(records))
    assert run.records_in == 2000
    # Each batch committed exactly once: no second attempt was ever needed.
    redone = list(
        Batch.objects.filter(stage_run__run=run, attempt__gt=1).values(
            "index", "attempt", "failures", "crashes", "error"
        )
    )
    assert not redone, redone
    for s in StageRun.objects.filter(run=run):
        assert s.records_in == s.records_out + s.records_filtered + s.records_failed
    # The duplicates really arrived, and each was received and skipped: one delivery per message did the work.
    received, results = Counter(), defaultdict(list)
    for line in deliveries.read_text().splitlines():
        kind, task_id, *rest = line.split()
        if kind == "received":
            received[task_id] += 1
        else:
            results[task_id].append(rest[0] if rest else "")
    assert received, "the worker received no batch message"
    assert all(n >= 2 for n in received.values()), f"messages received only once: {received}"
    assert sum(received.values()) >= 2 * len(received)
    skipped = 0
    for task_id, n in received.items():
        outcomes = results[task_id]
        assert len(outcomes) == n, (task_id, n, outcomes)
        assert outcomes.count("skipped") == n - 1, (task_id, outcomes)
        skipped += outcomes.count("skipped")
    assert skipped >= len(received)


def test_a_sigkilled_worker_loses_and_duplicates_nothing(workers, file_root, client):
    _config(engine_lease_seconds=2, engine_resend_after_seconds=3, worker_heartbeat_seconds=0.5)
    records = make_records(3000, unique=True)
    stages = [("slow", "test_slow", {"seconds": 0.15}), ("publish", "publish", {})]
    pipeline = make_pipeline(file_root, records=records, stages=stages, batch_size=100)
    first = workers.start(name="victim", pool="prefork", concurrency=2)
    workers.wait_ready(first)
    run = run_start(pipeline=pipeline, actor=None)
    slow = StageRun.objects.get(run=run, key="slow")
    wait_until(
        lambda: (
            Batch.objects.filter(stage_run=slow, status=BatchStatus.SUCCEEDED).count() >= 4
            and Batch.objects.filter(stage_run__run=run, status=BatchStatus.RUNNING).exists()
        ),
        60,
    )
    workers.kill(first)
    in_flight = Batch.objects.filter(stage_run__run=run, status=BatchStatus.RUNNING).count()
    assert in_flight >= 1

    # The workers page tells the truth: the worker is dead and its batches are orphaned.
    def page_shows_dead():
        engine.engine_settings_forget()
        view = workers_overview()
        return view["dead"] >= 1 and view["orphaned"]

    wait_until(page_shows_dead, 30)
    html = client.get("/workers/").content.decode()
    assert "victim@" in html and "df-worker-dead" in html

    second = workers.start(name="rescuer", pool="prefork", concurrency=2)
    workers.wait_ready(second)
    run_wait(run, timeout=180)
    assert run.status == RunStatus.SUCCEEDED, (run.status_reason, workers.log_tail())
    out = published(run)
    assert len(out) == len(records)
    assert checksum(out) == checksum(records)
    # At most the batches in flight were redone.
    assert Batch.objects.filter(stage_run__run=run, crashes__gt=0).count() <= in_flight


def test_run_pipeline_wait_exits_by_the_run_outcome(workers, file_root, tmp_path):
    good = make_pipeline(file_root, records=make_records(300), batch_size=100, name="good")
    stages = [("flaky", "test_fail", {"fail_batches": [0]}), ("publish", "publish", {})]
    make_pipeline(file_root, records=make_records(300), stages=stages, batch_size=100, name="bad", max_batch_attempts=1)
    w = workers.start(name="cmd")
    workers.wait_ready(w)
    call_command("run_pipeline", str(good.pk), "--wait", "--progress", "--interval", "0.1")
    with pytest.raises(SystemExit) as exit_info:
        call_command("run_pipeline", "bad", "--wait", "--interval", "0.1")
    assert exit_info.value.code == 1


def test_run_pipeline_command_in_a_subprocess_prints_progress(workers, file_root, settings):
    pipeline = make_pipeline(file_root, records=make_records(500), stages=STANDARD_STAGES, batch_size=100)
    w = workers.start(name="cli")
    workers.wait_ready(w)
    env = {**os.environ, **workers.env}
    proc = subprocess.run(
        [sys.executable, "manage.py", "run_pipeline", pipeline.name, "--wait", "--progress", "--interval", "0.1"],
        env=env,
        capture_output=True,
        timeout=120,
        cwd=str(settings.BASE_DIR),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Carriage-return rendering: the bar redraws in place.
    assert b"\r[" in proc.stdout and b"succeeded" in proc.stdout


def test_a_long_batch_keeps_its_lease_and_notices_when_it_loses_it(shared_db, file_root):
    from conftest import wait_until as until

    pipeline = make_pipeline(file_root, records=make_records(10), batch_size=10, name="lease")
    sent = []
    single = engine.dispatch_on_commit
    engine.dispatch_on_commit = sent.extend
    try:
        run_start(pipeline=pipeline, actor=None)
    finally:
        engine.dispatch_on_commit = single
    batch = engine.batch_claim(batch_id=sent[0][0], owner="me:1", lease_seconds=0.9)
    first_expiry = Batch.objects.get(pk=batch.pk).lease_expires_at
    with engine.LeaseKeeper(batch, batch._run_id, 0.9) as keeper:
        until(lambda: Batch.objects.get(pk=batch.pk).lease_expires_at > first_expiry, 20)
        keeper.check()  # still ours
        Batch.objects.filter(pk=batch.pk).update(lease_owner="thief:2")
        until(lambda: keeper.lost, 20)
        with pytest.raises(engine.LeaseLost):
            keeper.check()


def test_run_pipeline_wait_stops_on_a_run_waiting_for_review_and_says_why(workers, file_root):
    from io import StringIO

    from pipelines.tests.factories import QCPolicyFactory
    from tasks.models import TaskRun

    stages = [("qc", "qc", {}), ("publish", "publish", {})]
    pipeline = make_pipeline(file_root, records=make_records(300), stages=stages, batch_size=100, name="reviewed")
    pipeline.qc_policy = QCPolicyFactory(aql=2.5, seed=3)
    pipeline.save()
    w = workers.start(name="review")
    workers.wait_ready(w)
    out = StringIO()
    with pytest.raises(SystemExit) as exit_info:
        call_command("run_pipeline", "reviewed", "--wait", "--interval", "0.1", "--timeout", "120", stdout=out)
    assert exit_info.value.code == 3, out.getvalue()
    run = TaskRun.objects.get(pipeline=pipeline)
    assert run.status == RunStatus.WAITING and run.status_code == "qc_review"
    assert run.status_reason and "review" in run.status_reason
    assert "Waiting for QC review" in out.getvalue() and "publish" in out.getvalue()
