"""A model batch redone after a failure or a SIGKILL repeats only the calls whose answers were lost.

Real processes: a real Celery worker calls a real gRPC model server in this process (loopback, free port)
whose model counts every record it receives. Calls are serial (max_in_flight 1, 10 records per call), so
the batch's 4th call holds records 30-39; the server fails it (UNAVAILABLE past the client's retries, so
the batch fails and is redone) or holds it until the test SIGKILLs the worker (the batch is reaped and
redone by a second worker). Afterwards every other record was received exactly once, the records of the
lost call twice (or three times: two failed attempts of the client, then the redo), and the run's retry
cost is exactly the tokens of the records sent again. Waits poll the database; nothing asserts on time.
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

import grpc
import pytest
from django.contrib.humanize.templatetags.humanize import intcomma
from django.db.models import Sum
from django.urls import reverse
from django.utils import timezone

from conftest import wait_until
from dataflare_portal.core.config import config_set
from metrics.models import MetricsSummary, TokenUsage
from metrics.services import metrics_rollup
from modelserver.models import TokenCounter
from modelserver.server import _Reject
from modelserver.testing import running_server
from tasks import engine
from tasks.choices import BatchStatus, RunStatus
from tasks.models import Batch, StageRun
from tasks.services import run_start
from tasks.tests.conftest import run_wait
from tasks.tests.factories import make_records, published
from tasks.tests.test_inference_pipeline import inference_pipeline

pytestmark = [pytest.mark.integration]

MARK = " LOSTCALL"
LOST = range(30, 40)  # the 4th call of batch 0: its records are the ones sent again


class CountingCounter(TokenCounter):
    """The token counter, counting the records it receives; the call holding MARK is lost as the test says."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode
        self.lock = threading.Lock()
        self.received: Counter[str] = Counter()
        self.failures_left = 2  # the client's max_attempts: one logical call fails
        self.hung = threading.Event()
        self.release = threading.Event()

    def predict(self, texts, params):
        with self.lock:
            self.received.update(texts)
            lose = any(MARK in t for t in texts) and (
                self.failures_left > 0 if self.mode == "fail" else not self.hung.is_set()
            )
            if lose and self.mode == "fail":
                self.failures_left -= 1
        if lose and self.mode == "fail":
            raise _Reject(grpc.StatusCode.UNAVAILABLE, "the test loses this call")
        if lose:
            self.hung.set()
            self.release.wait(60)  # answered only after the worker that asked is dead
        return super().predict(texts, params)


def _fast_recovery():
    for key, value in {"engine_lease_seconds": 2, "engine_resend_after_seconds": 3}.items():
        config_set(key=key, value=value, actor=None)
    engine.engine_settings_forget()


@pytest.mark.parametrize("loss", ["fail", "sigkill"])
def test_a_redone_model_batch_repeats_only_the_lost_calls_and_counts_them_as_retry_cost(
    loss, workers, file_root, client
):
    _fast_recovery()
    model = CountingCounter("fail" if loss == "fail" else "hang")
    records = make_records(120, unique=True)
    for i in LOST:
        if i == 35:
            records[i]["text"] += MARK
    with running_server(models=[model]) as server:
        pipeline, _mc = inference_pipeline(
            file_root,
            server.address,
            records=records,
            batch_size=60,
            max_in_flight=1,
            max_attempts=2,
            deadline_ms=30_000,
            breaker_failure_threshold=100,  # the batch fails (and is redone); it does not wait for a breaker
        )
        first = workers.start(name="redo1")
        workers.wait_ready(first)
        run = run_start(pipeline=pipeline, actor=None)
        if loss == "sigkill":
            wait_until(model.hung.is_set, 120)
            workers.kill(first)
            model.release.set()
            second = workers.start(name="redo2")
            workers.wait_ready(second)
        run_wait(run, 180)
        assert run.status == RunStatus.SUCCEEDED, (run.status_reason, workers.log_tail())

    infer = StageRun.objects.get(run=run, key="infer")
    batch0 = Batch.objects.get(stage_run=infer, index=0)
    assert batch0.status == BatchStatus.SUCCEEDED and batch0.attempt == 2
    assert (batch0.failures, batch0.crashes) == ((1, 0) if loss == "fail" else (0, 1))

    # The server's own count: each record of the lost call twice (three times when the client tried it
    # twice before the batch failed), every other record once.
    texts = {r["id"]: r["text"] for r in records}
    lost_sends = 3 if loss == "fail" else 2
    assert {i: model.received[texts[i]] for i in texts} == {i: (lost_sends if i in LOST else 1) for i in texts}

    out = {r["id"]: r for r in published(run)}
    assert sorted(out) == sorted(texts)
    tokens = {i: out[i]["tokens"] for i in out}
    repeated = sum(tokens[i] for i in LOST)
    run.refresh_from_db()
    # Every record's tokens counted once, plus nothing: the lost call's first answer never reached us.
    assert run.prompt_tokens == sum(tokens.values())
    assert run.retry_tokens == repeated > 0
    usage = TokenUsage.objects.filter(run_id=run.pk).aggregate(p=Sum("prompt_tokens"), r=Sum("retry_tokens"))
    assert (usage["p"], usage["r"]) == (run.prompt_tokens, run.retry_tokens)
    # Every OK request the server answered to a live client is accounted for, once.
    ok = TokenUsage.objects.filter(run_id=run.pk, status_code="OK").aggregate(n=Sum("requests"))["n"]
    assert ok == 12  # 6 calls per batch of 60, each made (and paid for) once

    # Visible as such: in the rollups the dashboard reads, and on the run page.
    metrics_rollup(now=timezone.now() + timedelta(minutes=1))
    summary = MetricsSummary.objects.filter(granularity="minute", pipeline_id=pipeline.pk)
    assert summary.aggregate(r=Sum("retry_tokens"))["r"] == repeated
    page = client.get(reverse("tasks:run-detail", args=[run.pk])).content.decode()
    assert "Retry cost (tokens)" in page and f'id="df-run-retry-tokens">{intcomma(repeated)}<' in page
