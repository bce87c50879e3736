"""ModelClient on the OpenAI-compatible protocol against the reference server's real HTTP face on loopback."""

from __future__ import annotations

import json

import grpc
import pytest

from modelclient import (
    BreakerOpen,
    BreakerPolicy,
    EndpointRefused,
    ModelClient,
    ModelEndpoint,
    PermanentModelError,
    RetryPolicy,
    TlsConfig,
    TransientModelError,
)
from modelclient.openai_http import HttpPool, parse_retry_after
from modelserver.server import ServerHandle, TlsFiles
from modelserver.testing import running_server
from modelserver.text import count_tokens

FAST_RETRY = RetryPolicy(max_attempts=4, backoff_base_s=0.001, backoff_max_s=0.01)


def endpoint(handle: ServerHandle, model: str = "token-counter", api: str = "chat", **kw: object) -> ModelEndpoint:
    kw.setdefault("deadline_s", 5.0)
    kw.setdefault("retry", FAST_RETRY)
    return ModelEndpoint(handle.http.base_url, model, protocol="openai", openai_api=api, **kw)  # type: ignore[arg-type]


class Sleeps(list):
    """Records backoff sleeps instead of sleeping (the client's injectable sleep)."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def client(sleeps) -> ModelClient:
    pool = HttpPool()
    yield ModelClient(http_pool=pool, sleep=sleeps)
    pool.close()


# ---- answers and usage ----------------------------------------------------------------------------------


def test_chat_json_mode_gives_an_output_per_key_and_usage_matches_the_server(openai_server, client) -> None:
    texts = ["The new software release improves computer performance.", "今天的比赛球队赢了。"]
    config = endpoint(openai_server, "annotator", parameters={"response_format": {"type": "json_object"}})
    result = client.infer_texts(config, texts)
    assert [o["annotation"]["language"] for o in result.outputs] == ["en", "zh"]
    assert result.outputs[0]["annotation"]["topic"] == "technology"
    # One request per record for chat; the server's own totals are what the client reports.
    usage = openai_server.http.usage
    assert usage.requests == 2 and result.stats.status_counts == {"OK": 2}
    assert (result.prompt_tokens, result.completion_tokens) == (usage.prompt_tokens, usage.completion_tokens)
    assert result.prompt_tokens == sum(count_tokens(t) for t in texts)
    assert result.usage_reported


def test_completions_batch_in_one_request_and_text_outputs(openai_server, client) -> None:
    texts = ["one two three", "four five"]
    result = client.infer_texts(endpoint(openai_server, api="completions"), texts)
    assert [json.loads(o["text"])["token_count"] for o in result.outputs] == [3, 2]
    assert [o["finish_reason"] for o in result.outputs] == ["stop", "stop"]
    assert openai_server.http.usage.requests == 1 and result.prompt_tokens == 5


def test_embeddings_are_vectors_per_record(openai_server, client) -> None:
    config = endpoint(openai_server, "text-embedder", api="embeddings", parameters={"dimensions": 16})
    result = client.infer_texts(config, ["data factory pipelines", "data factory pipelines", "天气"])
    vectors = [o["embedding"] for o in result.outputs]
    assert all(len(v) == 16 for v in vectors) and vectors[0] == vectors[1] != vectors[2]
    assert (result.prompt_tokens, result.completion_tokens) == (3 + 3 + 2, 0)


def test_json_mode_on_completions_turns_the_answer_into_outputs(openai_server, client) -> None:
    config = endpoint(openai_server, api="completions", parameters={"response_format": {"type": "json_object"}})
    result = client.infer_texts(config, ["a b"])
    assert result.outputs == [{"token_count": 2}]


# ---- retries, Retry-After, no retry on 400, deadline ------------------------------------------------------


def test_503_is_retried_and_retry_after_is_honoured(openai_server, client, sleeps) -> None:
    openai_server.faults.configure(error_rate=1.0, retry_after_s=0.25)
    with pytest.raises(TransientModelError) as info:
        client.infer_texts(endpoint(openai_server), ["hello"])
    assert info.value.code == "UNAVAILABLE" and info.value.attempts == 4
    assert openai_server.faults.calls == 4
    assert len(sleeps) == 3 and all(s >= 0.25 for s in sleeps)


def test_429_is_retried_with_backoff_until_it_passes(openai_server, client, sleeps) -> None:
    openai_server.faults.configure(error_rate=0.5, error_code=grpc.StatusCode.RESOURCE_EXHAUSTED, seed=1)
    config = endpoint(openai_server, retry=RetryPolicy(max_attempts=20, backoff_base_s=0.001, backoff_max_s=0.01))
    result = client.infer_texts(config, ["a", "b", "c", "d", "e", "f"])
    assert len(result.outputs) == 6
    assert result.stats.status_counts["RESOURCE_EXHAUSTED"] == openai_server.faults.injected_errors > 0
    assert len(sleeps) == openai_server.faults.injected_errors


def test_retry_after_longer_than_an_attempt_ends_the_call(openai_server, client, sleeps) -> None:
    openai_server.faults.configure(error_rate=1.0, retry_after_s=120)
    with pytest.raises(TransientModelError, match="retry after 120s"):
        client.infer_texts(endpoint(openai_server), ["hello"])
    assert openai_server.faults.calls == 1 and sleeps == []


def test_400_is_never_retried(openai_server, client, sleeps) -> None:
    config = endpoint(openai_server, parameters={"poison_marker": "BAD"})
    with pytest.raises(PermanentModelError) as info:
        client.infer_texts(config, ["a BAD record"])
    assert (info.value.code, info.value.attempts) == ("INVALID_ARGUMENT", 1)
    assert "poison marker" in info.value.message and openai_server.faults.calls == 1 and sleeps == []


def test_bad_records_are_quarantined_by_bisection_and_per_request(openai_server, client) -> None:
    texts = ["ok one", "BAD two", "ok three", "ok four"]
    params = {"poison_marker": "BAD"}
    batched = client.infer_texts_isolating(endpoint(openai_server, api="completions"), texts, params)
    chat = client.infer_texts_isolating(endpoint(openai_server), texts, params)
    for result in (batched, chat):
        assert list(result.quarantined) == [1] and "poison marker" in result.quarantined[1]
        assert result.succeeded == 3
    assert chat.calls == 4  # one request per record: nothing to bisect


def test_a_hung_server_hits_the_deadline_once(openai_server, client) -> None:
    openai_server.faults.configure(hang=True)
    with pytest.raises(TransientModelError) as info:
        client.infer_texts(endpoint(openai_server, deadline_s=0.3), ["hello"])
    assert (info.value.code, info.value.attempts) == ("DEADLINE_EXCEEDED", 1)


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "150", "retry-after": "9"}) == 0.15
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=1445412470.0) == 10.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


# ---- breaker, in-flight, auth -------------------------------------------------------------------------------


def test_breaker_opens_and_then_refuses_without_calling(openai_server, client) -> None:
    openai_server.faults.configure(error_rate=1.0)
    config = endpoint(
        openai_server,
        retry=RetryPolicy(max_attempts=1),
        breaker=BreakerPolicy(failure_threshold=2, reset_timeout_s=60),
    )
    for _ in range(2):
        with pytest.raises(TransientModelError):
            client.infer_texts(config, ["x"])
    calls = openai_server.faults.calls
    with pytest.raises(BreakerOpen):
        client.infer_texts(config, ["x"])
    assert openai_server.faults.calls == calls


def test_api_key_is_sent_as_bearer_and_never_shown(client) -> None:
    with running_server(http_port=0, api_key="sk-test-123") as handle:
        with pytest.raises(PermanentModelError) as info:
            client.infer_texts(endpoint(handle), ["x"])
        assert info.value.code == "UNAUTHENTICATED"
        config = endpoint(handle, api_key="sk-test-123")
        assert client.infer_texts(config, ["x"]).outputs
        assert "sk-test-123" not in repr(config) and "sk-test-123" not in config.key
        health = client.check_health(config)
        assert health.model_ready and not health.error


# ---- pinning and the SSRF guard -----------------------------------------------------------------------------


def test_the_name_is_resolved_only_by_the_guard_and_the_dial_goes_to_its_answer(openai_server) -> None:
    asked = []

    def resolver(host: str, port: int) -> list[str]:
        asked.append(host)
        return ["127.0.0.1"]

    pool = HttpPool(resolver=resolver)
    try:
        client = ModelClient(http_pool=pool)
        # model.invalid does not resolve anywhere (RFC 6761): only the resolver's answer can be dialled.
        config = ModelEndpoint(
            f"http://model.invalid:{openai_server.http.port}/v1", "token-counter", protocol="openai", retry=FAST_RETRY
        )
        assert client.infer_texts(config, ["a b c"]).outputs
        assert asked == ["model.invalid"]
        _client, backend = pool.get(config)
        assert backend.dialled == ["127.0.0.1"]
    finally:
        pool.close()


def test_a_refused_address_is_never_dialled(openai_server) -> None:
    def guard(host: str, port: int) -> list[str]:
        raise EndpointRefused(f"{host} resolves to a private address")

    pool = HttpPool(resolver=guard)
    try:
        client = ModelClient(http_pool=pool)
        with pytest.raises(EndpointRefused):
            client.infer_texts(endpoint(openai_server), ["x"])
        assert not client.check_health(endpoint(openai_server)).live
        assert openai_server.faults.calls == 0 and openai_server.http.usage.requests == 0
    finally:
        pool.close()


def test_tls_is_checked_against_the_host_name_while_dialling_the_approved_ip(tls_for_rebind_name) -> None:
    tls = TlsFiles(tls_for_rebind_name["server_cert"], tls_for_rebind_name["server_key"])
    with running_server(http_port=0, tls=tls) as handle:
        pool = HttpPool(resolver=lambda host, port: ["127.0.0.1"])
        try:
            client = ModelClient(http_pool=pool)
            base = f"https://model.rebind.test:{handle.http.port}/v1"
            trusted = TlsConfig(root_certs=tls_for_rebind_name["ca"])
            config = ModelEndpoint(base, "token-counter", protocol="openai", tls=trusted, retry=FAST_RETRY)
            assert client.infer_texts(config, ["a b"]).outputs == [
                {"text": '{"token_count": 2}', "finish_reason": "stop"}
            ]
            # The same server under another name fails the certificate check: the name is what TLS checks.
            other = ModelEndpoint(
                f"https://other.rebind.test:{handle.http.port}/v1",
                "token-counter",
                protocol="openai",
                tls=trusted,
                retry=RetryPolicy(max_attempts=1),
            )
            with pytest.raises(TransientModelError):
                client.infer_texts(other, ["a b"])
        finally:
            pool.close()


def test_endpoint_must_be_a_plain_http_url(openai_server, client) -> None:
    for bad in ("127.0.0.1:8000", "ftp://host/v1", "http://user:pw@host/v1", "http://host/v1?x=1"):
        with pytest.raises(EndpointRefused):
            client.infer_texts(ModelEndpoint(bad, "m", protocol="openai"), ["x"])
