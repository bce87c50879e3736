"""Pipelines with a model_inference stage, run by the engine against a real reference gRPC server.

Step by step through the in-process doorbell (and the reaper's step function), plus one run on a real
Celery worker. The issue's "done when": token usage in tokens_usage; 30% UNAVAILABLE completes with bounded
attempts; a hung server waits (not failed) and resumes by itself; INVALID_ARGUMENT records are quarantined
with the reason and the counts reconcile.
"""

from __future__ import annotations

import grpc
import pytest
from django.db.models import Sum

from conftest import wait_until
from metrics.models import TokenUsage
from pipelines.models import ModelConfig, PipelineStage
from pipelines.tests.model_fixtures import model_client_private, model_server  # noqa: F401
from tasks.choices import BatchStatus, RunStatus, StageRunStatus
from tasks.models import Batch, QuarantinedRecord, StageRun
from tasks.services import reap, run_start
from tasks.tests.factories import make_pipeline, make_records, published

STAGES = [("infer", "model_inference", {"outputs": {"token_count": "tokens"}}), ("publish", "publish", {})]


def inference_pipeline(root, address: str, *, records, batch_size: int = 50, name: str = "infer", **mc_fields):
    """read → model_inference (token-counter) → publish, with a model config pointing at `address`."""
    values = {
        "endpoint": address,
        "model_name": "token-counter",
        "deadline_ms": 5_000,
        "max_attempts": 4,
        "backoff_base_ms": 5,
        "backoff_max_ms": 50,
        "max_in_flight": 4,
        "batch_size": 10,
        "breaker_failure_threshold": 3,
        "breaker_reset_seconds": 30,
    }
    values.update(mc_fields)
    mc = ModelConfig.objects.create(name=f"{name}-model", **values)
    pipeline = make_pipeline(root, records=records, stages=STAGES, name=name, batch_size=batch_size)
    PipelineStage.objects.filter(pipeline=pipeline, key="infer").update(model_config=mc)
    return pipeline, mc


def assert_counts_reconcile(run, n_in: int) -> None:
    run.refresh_from_db()
    assert run.records_in == n_in
    out = len(published(run))
    assert run.records_in == out + run.records_filtered + run.records_failed
    infer = StageRun.objects.get(run=run, key="infer")
    assert infer.records_in == infer.records_out + infer.records_filtered + infer.records_failed


def usage_of(run) -> dict[str, dict]:
    rows = (
        TokenUsage.objects.filter(run_id=run.pk)
        .values("status_code")
        .annotate(requests=Sum("requests"), records=Sum("records"), prompt=Sum("prompt_tokens"))
    )
    return {r["status_code"]: r for r in rows}


pytestmark = pytest.mark.django_db


def test_a_model_inference_pipeline_runs_and_its_token_usage_lands_in_tokens_usage(
    doorbell,
    file_root,
    model_server,  # noqa: F811
    model_client_private,  # noqa: F811
):
    records = make_records(230, unique=True)
    pipeline, mc = inference_pipeline(file_root, model_server.address, records=records)
    run = run_start(pipeline=pipeline, actor=None)
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.status_reason

    out = published(run)
    assert [r["id"] for r in out] == [r["id"] for r in records]
    assert all(isinstance(r["tokens"], int) and r["tokens"] > 0 for r in out)
    assert_counts_reconcile(run, 230)

    rows = TokenUsage.objects.filter(run_id=run.pk)
    assert {(r.model_name, r.model_version, r.status_code, r.stage_template) for r in rows} == {
        ("token-counter", "token-counter:1", "OK", "model_inference")
    }
    assert {r.project_id for r in rows} == {pipeline.project_id} and {r.pipeline_id for r in rows} == {pipeline.pk}
    usage = usage_of(run)["OK"]
    assert usage["records"] == 230
    assert usage["requests"] == model_server.faults.calls == 4 * 5 + 3  # 4 batches of 50 (5 calls), then 30
    # The token counter's prompt tokens are the sum of what it counted per record.
    assert usage["prompt"] == sum(r["tokens"] for r in out)


def test_with_30_percent_unavailable_the_run_completes_with_bounded_attempts(
    doorbell,
    file_root,
    model_server,  # noqa: F811
    model_client_private,  # noqa: F811
):
    model_server.faults.configure(error_rate=0.3, error_code=grpc.StatusCode.UNAVAILABLE, seed=3)
    records = make_records(400, unique=True)
    pipeline, mc = inference_pipeline(file_root, model_server.address, records=records, batch_size=40)
    run = run_start(pipeline=pipeline, actor=None)
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    assert len(published(run)) == 400  # every record processed
    assert_counts_reconcile(run, 400)

    usage = usage_of(run)
    ok_calls = usage["OK"]["requests"]
    assert usage["UNAVAILABLE"]["requests"] > 0
    attempts = sum(u["requests"] for u in usage.values())
    assert attempts == model_server.faults.calls  # every attempt the server saw is accounted for
    # A call that ran out of attempts fails its batch (retried by the engine); each failed batch attempt ended
    # at most its 4 calls, so logical calls <= OK calls + 4 x batch failures, each with <= max_attempts attempts.
    failures = sum(b.failures for b in Batch.objects.filter(stage_run__run=run))
    assert attempts <= (ok_calls + 4 * failures) * mc.max_attempts
    assert usage["OK"]["records"] >= 400


def test_a_hung_server_makes_the_stage_wait_and_the_run_resumes_by_itself(
    doorbell,
    file_root,
    model_server,  # noqa: F811
    model_client_private,  # noqa: F811
):
    model_server.faults.configure(hang=True)
    records = make_records(60, unique=True)
    pipeline, mc = inference_pipeline(
        file_root,
        model_server.address,
        records=records,
        batch_size=30,
        deadline_ms=300,
        breaker_failure_threshold=2,
        # Long enough that the second batch still finds the breaker open on a loaded machine.
        breaker_reset_seconds=3,
        max_in_flight=2,
    )
    run = run_start(pipeline=pipeline, actor=None)
    results = doorbell.drain()
    assert "waiting" in results and "failed" not in results

    run.refresh_from_db()
    infer = StageRun.objects.get(run=run, key="infer")
    assert run.status == RunStatus.WAITING and infer.status == StageRunStatus.WAITING
    assert "circuit breaker" in infer.status_reason
    waiting = Batch.objects.filter(stage_run=infer, status=BatchStatus.WAITING)
    assert waiting.exists()
    assert all(b.failures == 0 and b.not_before is not None for b in waiting)  # no attempt budget spent
    # Each hung call ended at its deadline; two opened the breaker (a third may have started in the same
    # instant), and the second batch's calls were never sent.
    assert 2 <= model_server.faults.hung_calls <= 3
    # The calls that timed out are in tokens_usage, so the dashboard and the alerts see the outage.
    assert usage_of(run)["DEADLINE_EXCEEDED"]["requests"] >= 2

    # The server comes back; beat's reaper passes (driven here) wake the batch once the breaker lets a probe in.
    model_server.faults.configure(hang=False)

    def advanced():
        reap()
        doorbell.drain()
        run.refresh_from_db()
        return run.status in RunStatus.terminal()

    wait_until(advanced, 30, interval=0.2)
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    assert len(published(run)) == 60
    assert_counts_reconcile(run, 60)


def test_invalid_argument_records_are_quarantined_not_retried_and_counts_reconcile(
    doorbell,
    file_root,
    model_server,  # noqa: F811
    model_client_private,  # noqa: F811
):
    model_server.faults.configure(poison_marker="POISON")
    records = make_records(120, unique=True)
    poisoned = {7, 55, 56, 119}
    for i in poisoned:
        records[i]["text"] += " POISON"
    records[30].pop("text")  # no input field: quarantined before any call
    pipeline, _mc = inference_pipeline(file_root, model_server.address, records=records, batch_size=50)
    run = run_start(pipeline=pipeline, actor=None)
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.status_reason

    quarantined = {q.record["id"]: q for q in QuarantinedRecord.objects.filter(stage_run__run=run)}
    assert set(quarantined) == poisoned | {30}
    for i in poisoned:
        assert quarantined[i].code == "INVALID_ARGUMENT" and "poison" in quarantined[i].reason.lower()
    assert quarantined[30].code == "MISSING_FIELD" and "'text'" in quarantined[30].reason
    assert [r["id"] for r in published(run)] == [r["id"] for r in records if r["id"] not in poisoned | {30}]
    assert run.records_failed == 5
    assert_counts_reconcile(run, 120)
    # Not retried: no batch failed, and the only extra calls are the bisection that isolated the bad records.
    assert not Batch.objects.filter(stage_run__run=run, failures__gt=0).exists()
    usage = usage_of(run)
    assert sum(u["requests"] for u in usage.values()) == model_server.faults.calls
    assert usage["OK"]["records"] == 120 - 5


@pytest.mark.integration
def test_a_real_worker_runs_a_model_inference_pipeline(workers, file_root, model_server):  # noqa: F811
    records = make_records(300, unique=True)
    pipeline, _mc = inference_pipeline(file_root, model_server.address, records=records, batch_size=100)
    proc = workers.start(name="infer1")
    workers.wait_ready(proc)
    run = run_start(pipeline=pipeline, actor=None)

    def done():
        reap()
        run.refresh_from_db()
        return run.status in RunStatus.terminal()

    wait_until(done, 120, interval=0.3)
    assert run.status == RunStatus.SUCCEEDED, (run.status_reason, workers.log_tail())
    assert len(published(run)) == 300
    assert usage_of(run)["OK"]["records"] == 300
    assert_counts_reconcile(run, 300)


@pytest.mark.integration
def test_a_real_worker_opens_the_shared_breaker_waits_and_resumes(workers, file_root, model_server, tmp_path):  # noqa: F811
    from conftest import redis_url
    from modelclient import RedisBreakerStore, SqliteBreakerStore
    from pipelines.model_configs import model_config_endpoint

    model_server.faults.configure(hang=True)
    records = make_records(60, unique=True)
    pipeline, mc = inference_pipeline(
        file_root,
        model_server.address,
        records=records,
        batch_size=30,
        deadline_ms=300,
        breaker_failure_threshold=2,
        breaker_reset_seconds=2,
        max_in_flight=2,
    )
    proc = workers.start(name="infer-hang")
    workers.wait_ready(proc)
    run = run_start(pipeline=pipeline, actor=None)

    def waiting():
        run.refresh_from_db()
        return run.status == RunStatus.WAITING

    wait_until(waiting, 60, interval=0.2)
    assert StageRun.objects.get(run=run, key="infer").status == StageRunStatus.WAITING
    # The worker installed the shared store at start (worker_init): this process sees the breaker it opened.
    url = redis_url()
    store = RedisBreakerStore(url) if url else SqliteBreakerStore(tmp_path / "worker-data" / "breaker.sqlite3")
    assert store.snapshot(model_config_endpoint(mc).key, 2).state in ("open", "half_open")

    model_server.faults.configure(hang=False)

    def done():
        reap()
        run.refresh_from_db()
        return run.status in RunStatus.terminal()

    wait_until(done, 90, interval=0.3)
    assert run.status == RunStatus.SUCCEEDED, (run.status_reason, workers.log_tail())
    assert len(published(run)) == 60
    assert_counts_reconcile(run, 60)


def test_batch_events_of_a_model_stage_carry_the_qualified_model_label(
    doorbell,
    file_root,
    model_server,  # noqa: F811
    model_client_private,  # noqa: F811
):
    from metrics.models import BatchEvent

    pipeline, _mc = inference_pipeline(file_root, model_server.address, records=make_records(60), name="label")
    run = run_start(pipeline=pipeline, actor=None)
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    labels = set(
        BatchEvent.objects.filter(run_id=run.pk, stage_template="model_inference").values_list(
            "model_version", flat=True
        )
    )
    assert labels == {"token-counter:1"}
