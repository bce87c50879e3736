"""The gateway's hot path (gateway/runtime.py): caches and their bounds, the group-commit meter and its
durability against a killed portal, OpenAI-shaped refusals, and the request log's retention."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import threading

import httpx
import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from catalog.tests.factories import ProjectFactory
from dataflare_portal.core.config import config_set
from dataflare_portal.core.registry import duties
from gateway import runtime, services
from gateway.models import GatewayKey, GatewayRequest
from gateway.runtime import Meter, caches
from metrics.models import TokenUsage
from pipelines.models import ModelConfig
from pipelines.tests.factories import ModelConfigFactory


def _post(client, path: str, text: str, body: dict):
    return client.post(
        f"/v1/{path}", json.dumps(body), content_type="application/json", headers={"Authorization": f"Bearer {text}"}
    )


def _call_row(key: GatewayKey, **extra) -> dict:
    row = {
        "key": key,
        "endpoint": "chat",
        "model": "llm",
        "model_name": "annotator",
        "model_version": "",
        "stream": False,
        "http_status": 200,
        "status_code": "OK",
        "error": "",
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "latency_ms": 1.5,
        "attempts": 1,
        "records": 1,
        "request_id": "r",
        "body": None,
        "metered": True,
    }
    row.update(extra)
    return row


# ---- caches --------------------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_it_answers_from_the_cache_and_a_revocation_in_this_process_applies_at_once(client, settings):
    settings.GATEWAY_CACHE_SECONDS = 300.0  # only the signal can make the second call see the revocation
    ModelConfigFactory(name="llm")
    key, text = services.key_create(actor=None, project=ProjectFactory(), name="k")
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {text}"}).status_code == 200
    assert caches.key(services.key_digest(text)).key.pk == key.pk

    services.key_revoke(actor=None, key=key)
    assert caches.key(services.key_digest(text)) is None
    answer = client.get("/v1/models", headers={"Authorization": f"Bearer {text}"})
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "revoked_api_key"


@pytest.mark.django_db(transaction=True)
def test_it_trusts_a_cached_key_only_for_the_bound(client, settings):
    """A revocation the signals did not see (another process) is honoured once the entry is older than the bound."""
    settings.GATEWAY_CACHE_SECONDS = 300.0
    key, text = services.key_create(actor=None, project=ProjectFactory(), name="k")
    headers = {"Authorization": f"Bearer {text}"}
    assert client.get("/v1/models", headers=headers).status_code == 200
    # As another process would: a plain UPDATE, no signal.
    GatewayKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
    assert client.get("/v1/models", headers=headers).status_code == 200  # within the bound: still cached
    settings.GATEWAY_CACHE_SECONDS = 0.0
    assert client.get("/v1/models", headers=headers).status_code == 401


@pytest.mark.django_db(transaction=True)
def test_it_checks_expiry_on_every_call_without_reloading(client, settings):
    settings.GATEWAY_CACHE_SECONDS = 300.0
    key, text = services.key_create(
        actor=None, project=ProjectFactory(), name="k", expires_at=timezone.now() + dt.timedelta(hours=1)
    )
    headers = {"Authorization": f"Bearer {text}"}
    assert client.get("/v1/models", headers=headers).status_code == 200
    caches.key(services.key_digest(text)).key.expires_at = timezone.now() - dt.timedelta(seconds=1)
    answer = client.get("/v1/models", headers=headers)
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "expired_api_key"


@pytest.mark.django_db(transaction=True)
def test_a_model_config_saved_in_this_process_replaces_the_cached_one(client, settings):
    settings.GATEWAY_CACHE_SECONDS = 300.0
    ModelConfigFactory(name="llm")
    key, text = services.key_create(actor=None, project=ProjectFactory(), name="k")
    body = {"model": "llm", "messages": [{"role": "user", "content": "x"}]}
    caches.models.clear()
    assert runtime.caches.model("llm") is None
    # The model is cached once a call resolved it (the upstream is unreachable: 502 or 503, either way routed).
    assert _post(client, "chat/completions", text, body).status_code in (502, 503, 504)
    assert caches.model("llm") is not None
    ModelConfig.objects.get(name="llm").delete()
    assert caches.model("llm") is None
    assert _post(client, "chat/completions", text, body).status_code == 404


# ---- the meter -----------------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_the_meter_commits_concurrent_calls_in_batches_and_resolves_each_after_its_commit():
    key, _text = services.key_create(actor=None, project=ProjectFactory(), name="k")
    gate = threading.Event()
    written: list[int] = []

    def write(rows):
        gate.wait(10)  # hold the first batch so the others pile up behind it
        services.gateway_calls_record(rows)
        written.append(len(rows))

    meter = Meter(write)
    futures = [meter.submit(_call_row(key, request_id=str(i))) for i in range(40)]
    assert not any(f.done() for f in futures)
    gate.set()
    for future in futures:
        assert future.result(timeout=30) is None
    meter.flush()
    assert sum(written) == 40 and len(written) < 40  # grouped
    assert GatewayRequest.objects.filter(key=key).count() == 40
    assert TokenUsage.objects.filter(gateway_key_id=key.pk).count() == 40


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("synchronous", [False, True])
def test_metering_commits_skip_the_wal_flush_on_postgresql_unless_configured(settings, synchronous):
    from django.db import connection

    key, _text = services.key_create(actor=None, project=ProjectFactory(), name="k")
    settings.GATEWAY_METER_SYNCHRONOUS_COMMIT = synchronous
    statements: list[str] = []

    def spy(execute, sql, params, many, context):
        statements.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(spy):
        services.gateway_calls_record([_call_row(key, request_id="one")])
    relaxed = [s for s in statements if "synchronous_commit" in s]
    expect_relaxed = connection.vendor == "postgresql" and not synchronous
    assert relaxed == (["SET LOCAL synchronous_commit = off"] if expect_relaxed else [])
    # SET LOCAL ends with the metering transaction: this connection's next transactions wait for the flush again.
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            assert cursor.fetchone()[0] == "on"
    assert GatewayRequest.objects.filter(key=key, request_id="one").count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_bad_row_fails_alone_and_its_batch_neighbours_are_written():
    key, _text = services.key_create(actor=None, project=ProjectFactory(), name="k")
    gate = threading.Event()

    def write(rows):
        gate.wait(10)
        services.gateway_calls_record(rows)

    meter = Meter(write)
    good = [meter.submit(_call_row(key, request_id=f"g{i}")) for i in range(3)]
    bad = meter.submit(_call_row(key, http_status=-1))  # breaks the column's check: the batch fails
    later = meter.submit(_call_row(key, request_id="later"))
    gate.set()
    for future in [*good, later]:
        assert future.result(timeout=30) is None
    with pytest.raises(RuntimeError):
        bad.result(timeout=30)
    meter.flush()
    ids = set(GatewayRequest.objects.filter(key=key).values_list("request_id", flat=True))
    assert ids == {"g0", "g1", "g2", "later"}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_the_client_received_is_metered_even_if_the_portal_is_killed_at_once(portal, openai_server, stream):
    """SIGKILL right after the answer (or the stream's end) arrived: the call's usage row is already committed."""
    project = ProjectFactory()
    ModelConfig.objects.create(
        name="llm", protocol="openai", openai_api="chat", endpoint=openai_server.http.base_url, model_name="annotator"
    )
    key, text = services.key_create(actor=None, project=project, name="k")
    body = {"model": "llm", "messages": [{"role": "user", "content": "Count these tokens."}], "stream": stream}
    headers = {"Authorization": f"Bearer {text}"}
    if stream:
        body["stream_options"] = {"include_usage": True}
        with httpx.stream("POST", f"{portal.base_url}/chat/completions", json=body, headers=headers) as answer:
            lines = [line for line in answer.iter_lines() if line.startswith("data: ")]
            if lines and lines[-1] == "data: [DONE]":
                os.killpg(portal.proc.pid, signal.SIGKILL)
        usage = json.loads(lines[-2][len("data: ") :])["usage"]
    else:
        answer = httpx.post(f"{portal.base_url}/chat/completions", json=body, headers=headers, timeout=30)
        os.killpg(portal.proc.pid, signal.SIGKILL)
        usage = answer.json()["usage"]
    assert lines[-1] == "data: [DONE]" if stream else answer.status_code == 200
    portal.proc.wait(timeout=15)
    rows = list(TokenUsage.objects.filter(gateway_key_id=key.pk).values_list("prompt_tokens", "completion_tokens"))
    assert rows == [(usage["prompt_tokens"], usage["completion_tokens"])]
    assert GatewayRequest.objects.filter(key=key, http_status=200, stream=stream).count() == 1


# ---- errors in OpenAI's shape --------------------------------------------------------------------------
@pytest.mark.django_db
def test_a_wrong_method_gets_405_in_openai_shape_with_allow(client):
    for method, path, allowed in (
        ("get", "/v1/chat/completions", "POST"),
        ("put", "/v1/embeddings", "POST"),
        ("post", "/v1/models", "GET, HEAD"),
        ("delete", "/v1/completions", "POST"),
    ):
        answer = getattr(client, method)(path)
        assert answer.status_code == 405, (method, path)
        assert answer["Allow"] == allowed
        error = answer.json()["error"]
        assert error["type"] == "invalid_request_error" and error["code"] == "method_not_allowed"
        assert method.upper() in error["message"]


def test_refusals_are_worded_in_the_active_language():
    """The gateway runs without the locale middleware (clients get the portal's language); the messages an
    operator reads in the request log or a zh portal are translated."""
    from django.test import RequestFactory
    from django.utils import translation

    from gateway.views import _allow

    async def view(request):
        raise AssertionError("not reached")

    with translation.override("zh-hans"):
        refused = asyncio.run(_allow("POST")(view)(RequestFactory().get("/v1/chat/completions")))
        body = json.loads(refused.content)
        with pytest.raises(services.GatewayAuthError) as missing:
            services.key_text("")
    assert refused.status_code == 405
    assert "GET" in body["error"]["message"] and "Method" not in body["error"]["message"]
    assert "Authorization" in missing.value.message and "No API key" not in missing.value.message


# ---- retention -----------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_the_request_log_is_pruned_past_its_retention_by_the_periodic_duty():
    key, _text = services.key_create(actor=None, project=ProjectFactory(), name="k")
    now = timezone.now()
    for days in (1, 10, 40, 400):
        GatewayRequest.objects.create(
            ts=now - dt.timedelta(days=days), key=key, project_id=key.project_id, endpoint="chat", http_status=200
        )
    assert "gateway.prune" in duties
    assert django_settings.CELERY_BEAT_SCHEDULE["prune-gateway-requests"]["task"] == "gateway.prune"
    assert duties["gateway.prune"].run() == {"requests": 2}  # default: 30 days
    config_set(key="gateway_request_retention_days", value=5, actor=None)
    assert services.gateway_requests_prune(now=now) == 1
    assert list(GatewayRequest.objects.values_list("ts", flat=True)) == [now - dt.timedelta(days=1)]
