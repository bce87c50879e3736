"""model_inference over the OpenAI-compatible protocol, run by the engine against the reference server's HTTP face.

The same pipeline as test_inference_pipeline.py with the model config switched to `protocol=openai`: JSON mode
gives one output per key, mapped to a record field as with KServe V2; tokens recorded in tokens_usage are the
server's own `usage` totals; 30 % injected 503s (with Retry-After) complete with bounded attempts; and a real
Celery worker decrypts the config's API key to call a server that requires it.
"""

from __future__ import annotations

import pytest
from django.db.models import Sum

from conftest import wait_until
from metrics.models import TokenUsage
from modelserver.testing import running_server
from pipelines.choices import ModelProtocol
from pipelines.tests.model_fixtures import model_client_private  # noqa: F401
from tasks.choices import RunStatus
from tasks.models import Batch
from tasks.services import reap, run_start
from tasks.tests.factories import make_records, published
from tasks.tests.test_inference_pipeline import assert_counts_reconcile, inference_pipeline, usage_of

pytestmark = pytest.mark.django_db
JSON_MODE = {"response_format": {"type": "json_object"}}


@pytest.fixture
def openai_face():
    with running_server(http_port=0, api_key="sk-face-key") as handle:
        yield handle


def openai_pipeline(root, handle, *, records, **fields):
    pipeline, mc = inference_pipeline(
        root,
        handle.http.base_url,
        records=records,
        protocol=ModelProtocol.OPENAI,
        **{"openai_api": "chat", "parameters": JSON_MODE, **fields},
    )
    mc.api_key_set("sk-face-key")
    mc.save()
    return pipeline, mc


def tokens_of(run) -> tuple[int, int]:
    total = TokenUsage.objects.filter(run_id=run.pk).aggregate(p=Sum("prompt_tokens"), c=Sum("completion_tokens"))
    return total["p"], total["c"]


def test_an_openai_chat_pipeline_maps_json_outputs_and_records_the_servers_tokens(
    doorbell,
    file_root,
    openai_face,
    model_client_private,  # noqa: F811
):
    records = make_records(60, unique=True)
    pipeline, mc = openai_pipeline(file_root, openai_face, records=records, batch_size=20)
    run = run_start(pipeline=pipeline, actor=None)
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.status_reason

    out = published(run)
    assert [r["id"] for r in out] == [r["id"] for r in records]
    assert all(isinstance(r["tokens"], int) and r["tokens"] > 0 for r in out)
    assert_counts_reconcile(run, 60)
    usage = usage_of(run)
    # Chat: one request per record, each one an OK row's request.
    assert usage["OK"]["requests"] == usage["OK"]["records"] == 60 == openai_face.http.usage.requests
    assert tokens_of(run) == (openai_face.http.usage.prompt_tokens, openai_face.http.usage.completion_tokens)
    assert usage["OK"]["prompt"] == sum(r["tokens"] for r in out)  # the prompt is the record's text
    assert set(TokenUsage.objects.filter(run_id=run.pk).values_list("model_name", flat=True)) == {"token-counter"}


def test_with_30_percent_503_the_openai_run_completes_with_bounded_attempts(
    doorbell,
    file_root,
    openai_face,
    model_client_private,  # noqa: F811
):
    openai_face.faults.configure(error_rate=0.3, retry_after_s=0.01, seed=5)
    records = make_records(120, unique=True)
    pipeline, mc = openai_pipeline(file_root, openai_face, records=records, batch_size=40, openai_api="completions")
    run = run_start(pipeline=pipeline, actor=None)
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    assert len(published(run)) == 120
    assert_counts_reconcile(run, 120)

    usage = usage_of(run)
    attempts = sum(u["requests"] for u in usage.values())
    assert usage["UNAVAILABLE"]["requests"] == openai_face.faults.injected_errors > 0
    assert attempts == openai_face.faults.calls  # every request the server saw is accounted for
    failures = sum(b.failures for b in Batch.objects.filter(stage_run__run=run))
    assert attempts <= (usage["OK"]["requests"] + mc.max_in_flight * failures) * mc.max_attempts
    # Tokens reconcile with what the server reported for the answers it gave.
    assert tokens_of(run) == (openai_face.http.usage.prompt_tokens, openai_face.http.usage.completion_tokens)


@pytest.mark.integration
def test_a_real_worker_calls_the_openai_face_with_the_decrypted_key(workers, file_root, openai_face):
    records = make_records(80, unique=True)
    pipeline, _mc = openai_pipeline(file_root, openai_face, records=records, batch_size=40)
    proc = workers.start(name="infer-openai")
    workers.wait_ready(proc)
    run = run_start(pipeline=pipeline, actor=None)

    def done():
        reap()
        run.refresh_from_db()
        return run.status in RunStatus.terminal()

    wait_until(done, 120, interval=0.3)
    assert run.status == RunStatus.SUCCEEDED, (run.status_reason, workers.log_tail())
    assert len(published(run)) == 80
    assert usage_of(run)["OK"]["records"] == 80
    assert tokens_of(run) == (openai_face.http.usage.prompt_tokens, openai_face.http.usage.completion_tokens)
    assert "sk-face-key" not in workers.log_tail()
