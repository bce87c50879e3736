"""The gateway driven by the official `openai` client against a real portal process (uvicorn) and the
reference model server on loopback, with both protocols behind it; tokens checked per key and model."""

from __future__ import annotations

import datetime as dt
import time

import httpx
import openai
import pytest
from django.utils import timezone

from catalog.tests.factories import ProjectFactory
from conftest import wait_until
from gateway import services
from gateway.models import GatewayKey, GatewayRequest
from gateway.tests.conftest import CACHE_SECONDS
from metrics.models import TokenUsage
from pipelines.models import ModelConfig

pytestmark = pytest.mark.django_db(transaction=True)


def _openai_config(server, name="llm", api="chat", model="annotator", **extra) -> ModelConfig:
    return ModelConfig.objects.create(
        name=name,
        protocol="openai",
        openai_api=api,
        endpoint=server.http.base_url,
        model_name=model,
        deadline_ms=10_000,
        max_attempts=4,
        backoff_base_ms=5,
        backoff_max_ms=50,
        max_in_flight=8,
        **extra,
    )


def _kserve_config(server, name="scorer", model="annotator") -> ModelConfig:
    return ModelConfig.objects.create(
        name=name, endpoint=server.address, model_name=model, deadline_ms=10_000, backoff_base_ms=5, backoff_max_ms=50
    )


def _client(portal, key_text: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=portal.base_url, api_key=key_text, max_retries=0, timeout=30)


def _settled(key: GatewayKey, calls: int) -> None:
    """Wait until the portal has recorded `calls` calls of the key (it meters just after answering)."""
    wait_until(lambda: GatewayRequest.objects.filter(key=key).count() >= calls, timeout=60)


def _tokens(key: GatewayKey, model: str | None = None) -> tuple[int, int, int]:
    qs = TokenUsage.objects.filter(gateway_key_id=key.pk)
    if model:
        qs = qs.filter(model_name=model)
    rows = list(qs.values_list("prompt_tokens", "completion_tokens", "project_id"))
    assert all(p == key.project_id for _a, _b, p in rows)
    return sum(r[0] for r in rows), sum(r[1] for r in rows), len(rows)


def test_openai_backend_chat_streaming_completions_embeddings_and_models_metered_per_key(portal, openai_server) -> None:
    project = ProjectFactory()
    _openai_config(openai_server, "llm", "chat", "annotator")
    _openai_config(openai_server, "embedder", "embeddings", "text-embedder")
    key, text = services.key_create(actor=None, project=project, name="notebook")
    other, other_text = services.key_create(actor=None, project=project, name="batch-job")
    api = _client(portal, text)

    assert {m.id for m in api.models.list()} == {"llm", "embedder"}

    messages = [{"role": "system", "content": "Annotate."}, {"role": "user", "content": "Markets rallied today."}]
    plain = api.chat.completions.create(model="llm", messages=messages)
    assert plain.model == "llm"
    assert plain.choices[0].message.content
    assert plain.usage.prompt_tokens > 0 and plain.usage.completion_tokens > 0

    chunks = list(
        api.chat.completions.create(model="llm", messages=messages, stream=True, stream_options={"include_usage": True})
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == plain.choices[0].message.content
    assert len([c for c in chunks if c.choices]) > 3
    assert chunks[-1].usage.total_tokens == plain.usage.total_tokens

    # Without include_usage the client gets no usage chunk, yet the gateway still meters the stream.
    quiet = list(api.chat.completions.create(model="llm", messages=messages, stream=True))
    assert all(c.usage is None for c in quiet) and all(c.choices for c in quiet)

    completion = _client(portal, other_text).completions.create(model="llm", prompt=["short", "a longer prompt"])
    assert [c.index for c in completion.choices] == [0, 1]

    vectors = api.embeddings.create(model="embedder", input=["alpha beta", "gamma"])
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 64

    _settled(key, 4)
    _settled(other, 1)
    server = openai_server.http.usage
    mine_p, mine_c, mine_rows = _tokens(key)
    theirs_p, theirs_c, _ = _tokens(other)
    # Every token the server counted is recorded, split by key.
    assert (mine_p + theirs_p, mine_c + theirs_c) == (server.prompt_tokens, server.completion_tokens)
    assert mine_rows == 4  # chat, streamed chat twice, embeddings
    assert theirs_p == completion.usage.prompt_tokens and theirs_c == completion.usage.completion_tokens
    assert _tokens(key, "text-embedder")[0] == vectors.usage.prompt_tokens
    stages = set(TokenUsage.objects.filter(gateway_key_id=key.pk).values_list("stage_template", flat=True))
    assert stages == {"gateway"}
    # The request log keeps metadata per key, never the prompt (no opt-in).
    logged = list(GatewayRequest.objects.filter(key=key).order_by("id"))
    assert [r.endpoint for r in logged] == ["chat", "chat", "chat", "embeddings"]
    assert [r.stream for r in logged] == [False, True, True, False]
    assert all(r.prompt is None and r.http_status == 200 for r in logged)
    assert "Markets rallied" not in portal.log_text()
    assert text not in portal.log_text() and other_text not in portal.log_text()


def test_kserve_backend_answers_chat_stream_and_completions(portal, model_server) -> None:
    project = ProjectFactory()
    _kserve_config(model_server, "scorer", "quality-scorer")
    key, text = services.key_create(actor=None, project=project, name="k", store_prompts=True)
    api = _client(portal, text)
    answer = api.chat.completions.create(model="scorer", messages=[{"role": "user", "content": "A fine sentence."}])
    assert "score" in answer.choices[0].message.content
    chunks = list(
        api.chat.completions.create(
            model="scorer",
            messages=[{"role": "user", "content": "A fine sentence."}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer.choices[0].message.content
    assert chunks[-1].usage.prompt_tokens == answer.usage.prompt_tokens
    done = api.completions.create(model="scorer", prompt=["one", "two words"])
    assert len(done.choices) == 2
    _settled(key, 3)
    prompt, completion, rows = _tokens(key, "quality-scorer")
    assert rows == 3
    assert prompt == 2 * answer.usage.prompt_tokens + done.usage.prompt_tokens
    # This key opted in: the request body is kept.
    stored = GatewayRequest.objects.filter(key=key).order_by("id").first()
    assert stored.prompt["messages"][0]["content"] == "A fine sentence."


def test_wrong_revoked_expired_and_missing_keys_get_401_naming_the_problem(portal, openai_server) -> None:
    project = ProjectFactory()
    _openai_config(openai_server)
    key, text = services.key_create(actor=None, project=project, name="k")
    assert _client(portal, text).models.list().data

    with pytest.raises(openai.AuthenticationError) as wrong:
        _client(portal, text[:-4] + "AAAA").chat.completions.create(
            model="llm", messages=[{"role": "user", "content": "x"}]
        )
    assert wrong.value.status_code == 401 and "Invalid API key" in str(wrong.value)
    with pytest.raises(openai.AuthenticationError) as foreign:
        _client(portal, "sk-not-ours").models.list()
    assert "dfk_" in str(foreign.value)

    # The portal cached the key; a revocation made in another process (this one) applies within the bound.
    services.key_revoke(actor=None, key=key)
    revoked_at = time.monotonic()

    def refused():
        try:
            _client(portal, text).models.list()
        except openai.AuthenticationError as exc:
            return exc
        return None

    revoked = wait_until(refused, timeout=CACHE_SECONDS + 2, interval=0.05)
    assert time.monotonic() - revoked_at <= CACHE_SECONDS + 1.0
    assert "revoked" in str(revoked) and revoked.code == "revoked_api_key"

    old, old_text = services.key_create(
        actor=None, project=project, name="old", expires_at=timezone.now() + dt.timedelta(hours=1)
    )
    GatewayKey.objects.filter(pk=old.pk).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    with pytest.raises(openai.AuthenticationError) as expired:
        _client(portal, old_text).models.list()
    assert "expired" in str(expired.value) and expired.value.code == "expired_api_key"

    bare = httpx.post(f"{portal.base_url}/chat/completions", json={"model": "llm"}, timeout=10)
    assert bare.status_code == 401
    assert bare.json()["error"]["code"] == "missing_api_key"
    assert bare.headers["www-authenticate"] == "Bearer"
    assert text not in portal.log_text() and old_text not in portal.log_text()


def test_over_budget_and_paused_project_get_429_and_bad_requests_name_the_field(portal, openai_server) -> None:
    project = ProjectFactory()
    _openai_config(openai_server)
    _openai_config(openai_server, "other", "chat", "token-counter")
    key, text = services.key_create(actor=None, project=project, name="small", token_budget=5)
    allowed = ModelConfig.objects.get(name="llm")
    key.allowed_models.set([allowed])
    api = _client(portal, text)
    api.chat.completions.create(model="llm", messages=[{"role": "user", "content": "Spend the whole budget now."}])
    _settled(key, 1)
    with pytest.raises(openai.RateLimitError) as over:
        api.chat.completions.create(model="llm", messages=[{"role": "user", "content": "again"}])
    assert over.value.status_code == 429 and "over its token budget" in str(over.value)
    assert over.value.code == "key_budget_exceeded"

    with pytest.raises(openai.PermissionDeniedError):
        api.chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError) as missing:
        api.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert "'nope' does not exist" in str(missing.value)
    with pytest.raises(openai.BadRequestError) as bad:
        api.chat.completions.create(model="llm", messages=[{"role": "robot", "content": "x"}])
    assert "messages[0].role" in str(bad.value)

    free, free_text = services.key_create(actor=None, project=project, name="free")
    project.runs_paused, project.paused_reason = True, "Token budget exceeded (rule monthly)"
    project.save()
    with pytest.raises(openai.RateLimitError) as paused:
        _client(portal, free_text).chat.completions.create(model="llm", messages=[{"role": "user", "content": "x"}])
    assert "rule monthly" in str(paused.value)
    # Refusals are logged per key, metered nowhere.
    _settled(free, 1)
    assert GatewayRequest.objects.filter(key=key, http_status=429).count() == 1
    assert TokenUsage.objects.filter(gateway_key_id=free.pk).count() == 0


def test_upstream_503s_are_retried_within_the_configs_budget(portal, openai_server) -> None:
    project = ProjectFactory()
    _openai_config(openai_server)
    key, text = services.key_create(actor=None, project=project, name="k")
    openai_server.faults.configure(error_rate=0.3, seed=7)
    api = _client(portal, text)
    for _ in range(6):
        assert api.chat.completions.create(model="llm", messages=[{"role": "user", "content": "steady"}]).choices
    _settled(key, 6)
    statuses = set(TokenUsage.objects.filter(gateway_key_id=key.pk).values_list("status_code", flat=True))
    assert statuses == {"OK"}
    assert sum(TokenUsage.objects.filter(gateway_key_id=key.pk).values_list("requests", flat=True)) >= 6


def test_the_lean_asgi_app_refuses_big_bodies_answers_head_and_echoes_the_request_id(portal, openai_server) -> None:
    from django.conf import settings

    project = ProjectFactory()
    _openai_config(openai_server)
    key, text = services.key_create(actor=None, project=project, name="k")
    auth = {"Authorization": f"Bearer {text}"}
    big = b'{"model": "llm", "messages": "' + b"x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 10) + b'"}'
    too_big = httpx.post(f"{portal.base_url}/chat/completions", content=big, headers=auth, timeout=30)
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "body_too_large"
    head = httpx.head(f"{portal.base_url}/models", headers=auth, timeout=10)
    assert head.status_code == 200 and head.content == b""
    answer = httpx.post(
        f"{portal.base_url}/chat/completions",
        json={"model": "llm", "messages": [{"role": "user", "content": "Rates held."}]},
        headers={**auth, "X-Request-ID": "trace-42"},
        timeout=30,
    )
    assert answer.status_code == 200 and answer.headers["x-request-id"] == "trace-42"
    assert int(answer.headers["content-length"]) == len(answer.content)
    _settled(key, 2)
    assert GatewayRequest.objects.filter(key=key, request_id="trace-42", http_status=200).count() == 1
    assert GatewayRequest.objects.filter(key=key, http_status=413).count() == 1
