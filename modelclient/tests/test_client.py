"""ModelClient against a real reference server: outputs, retries, deadlines, breaker, isolation."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from modelclient import (
    BreakerOpen,
    BreakerPolicy,
    ModelClient,
    ModelEndpoint,
    PermanentModelError,
    RetryPolicy,
    TlsConfig,
    TransientModelError,
)
from modelclient.channels import ChannelPool
from modelserver.models import OutputTensor, Params, Prediction, TextModel
from modelserver.server import ServerHandle, TlsFiles
from modelserver.testing import running_server
from modelserver.text import count_tokens

FAST_RETRY = RetryPolicy(max_attempts=8, backoff_base_s=0.001, backoff_max_s=0.01)


def endpoint(handle: ServerHandle, model: str = "token-counter", **kw: object) -> ModelEndpoint:
    kw.setdefault("deadline_s", 5.0)
    kw.setdefault("retry", FAST_RETRY)
    return ModelEndpoint(handle.address, model, **kw)  # type: ignore[arg-type]


@pytest.fixture
def client() -> ModelClient:
    pool = ChannelPool()
    yield ModelClient(channel_pool=pool)
    pool.close()


# ----------------------------------------------------------------------------- happy path


def test_each_model_returns_per_record_outputs_and_usage(model_server, client) -> None:
    texts = ["The stock market rallied as the central bank held rates.", "今天的比赛球队赢了。"]
    counted = client.infer_texts(endpoint(model_server), texts)
    assert [o["token_count"] for o in counted.outputs] == [count_tokens(t) for t in texts]
    assert (counted.prompt_tokens, counted.completion_tokens, counted.usage_reported) == (
        sum(count_tokens(t) for t in texts),
        0,
        True,
    )

    scored = client.infer_texts(endpoint(model_server, "quality-scorer"), texts, {"min_words": 3})
    assert all(0.0 <= o["score"] <= 1.0 and isinstance(o["keep"], bool) for o in scored.outputs)
    assert "stop_word_ratio" in json.loads(scored.outputs[0]["signals"])

    annotated = client.infer_texts(endpoint(model_server, "annotator"), texts, {"max_tokens": 8, "temperature": 0.0})
    labels = [json.loads(o["annotation"]) for o in annotated.outputs]
    assert [(a["language"], a["topic"]) for a in labels] == [("en", "finance"), ("zh", "sports")]
    assert annotated.completion_tokens == sum(o["completion_tokens"] for o in annotated.outputs) > 0
    assert annotated.stats.status_counts == {"OK": 1}
    assert (annotated.model_name, annotated.model_version) == ("annotator", "1")


def test_raw_contents_mode_gives_the_same_answers(model_server, client) -> None:
    texts = [f"record {i} with some words" for i in range(50)]
    plain = client.infer_texts(endpoint(model_server), texts)
    raw = client.infer_texts(endpoint(model_server, raw_contents=True), texts)
    assert plain.outputs == raw.outputs


def test_channels_are_reused_per_endpoint(model_server) -> None:
    pool = ChannelPool()
    try:
        c = ModelClient(channel_pool=pool)
        for _ in range(5):
            c.infer_texts(endpoint(model_server), ["a"])
        assert pool.get(endpoint(model_server)) is pool.get(endpoint(model_server, "annotator"))
        assert len(pool._slots) == 1
    finally:
        pool.close()


# -------------------------------------------------------------------------------- retries


def test_thirty_percent_unavailable_processes_every_record_with_bounded_attempts(model_server, client) -> None:
    model_server.faults.configure(error_rate=0.3, error_code=grpc.StatusCode.UNAVAILABLE, seed=7)
    # 8 threads share the server's seeded draws in whatever order they arrive, so which call gets which
    # error varies; 12 attempts make a call that fails every one (0.3^12 x 120 calls ~ 6e-5) practically
    # impossible, where 8 would fail about one run in 130.
    retry = RetryPolicy(max_attempts=12, backoff_base_s=0.001, backoff_max_s=0.01)
    config = endpoint(model_server, retry=retry, breaker=BreakerPolicy(failure_threshold=3, reset_timeout_s=60))
    batches = [[f"batch {b} record {r}" for r in range(20)] for b in range(120)]

    def run(batch: list[str]):
        return client.infer_texts(config, batch)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, batches))
    assert all(len(r.outputs) == 20 and all("token_count" in o for o in r.outputs) for r in results)
    attempts = [r.stats.attempts for r in results]
    assert max(attempts) <= retry.max_attempts
    failed = sum(r.stats.status_counts["UNAVAILABLE"] for r in results)
    total = sum(attempts)
    assert total == len(batches) + failed  # every failure was retried, nothing else was
    assert 0.15 < failed / total < 0.45
    assert model_server.faults.calls == total
    assert client.breaker(config).snapshot().state == "closed"


def test_retries_are_bounded_and_resource_exhausted_backs_off_harder(model_server) -> None:
    sleeps: list[float] = []
    client = ModelClient(sleep=sleeps.append)
    model_server.faults.configure(error_rate=1.0, error_code=grpc.StatusCode.RESOURCE_EXHAUSTED)
    retry = RetryPolicy(max_attempts=4, backoff_base_s=0.01, backoff_max_s=1.0)
    with pytest.raises(TransientModelError) as exc:
        client.infer_texts(endpoint(model_server, retry=retry), ["x"])
    assert (exc.value.code, exc.value.attempts) == ("RESOURCE_EXHAUSTED", 4)
    assert exc.value.stats.status_counts == {"RESOURCE_EXHAUSTED": 4}
    assert model_server.faults.calls == 4
    assert len(sleeps) == 3
    # Full jitter within the capped exponential envelope, x4 for RESOURCE_EXHAUSTED.
    for i, delay in enumerate(sleeps):
        assert 0 <= delay <= min(1.0, 0.01 * 4 * 2**i)


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNIMPLEMENTED,
    ],
)
def test_permanent_errors_are_not_retried(model_server, client, code) -> None:
    model_server.faults.configure(error_rate=1.0, error_code=code)
    with pytest.raises(PermanentModelError) as exc:
        client.infer_texts(endpoint(model_server), ["x"])
    assert (exc.value.code, exc.value.attempts) == (code.name, 1)
    assert model_server.faults.calls == 1


def test_unknown_model_is_permanent_not_found(model_server, client) -> None:
    with pytest.raises(PermanentModelError) as exc:
        client.infer_texts(endpoint(model_server, "no-such-model"), ["x"])
    assert exc.value.code == "NOT_FOUND"


def test_oversized_batch_is_permanent_and_says_split_it(model_server, client) -> None:
    config = endpoint(model_server, max_message_bytes=1024)
    with pytest.raises(PermanentModelError) as exc:
        client.infer_texts(config, ["x" * 4000])
    assert exc.value.message_too_large


# --------------------------------------------------------------------- deadlines, breaker


def test_hung_server_ends_every_call_at_its_deadline_then_the_breaker_opens_and_recovers(model_server, client) -> None:
    model_server.faults.configure(hang=True)
    config = endpoint(
        model_server,
        deadline_s=0.3,
        breaker=BreakerPolicy(failure_threshold=3, reset_timeout_s=0.5),
    )
    for _ in range(3):
        started = time.monotonic()
        with pytest.raises(TransientModelError) as exc:
            client.infer_texts(config, ["x"])
        assert exc.value.code == "DEADLINE_EXCEEDED"
        assert exc.value.attempts == 1  # a deadline is not retried inside the call
        assert time.monotonic() - started < 0.3 + 5  # generous bound: ends at the deadline
    assert client.breaker(config).snapshot().state == "open"
    with pytest.raises(BreakerOpen) as opened:
        client.infer_texts(config, ["x"])
    assert 0 < opened.value.retry_after <= 0.5
    assert model_server.faults.calls == 3  # the open breaker sent nothing to the server

    # Still hung at the first probe: the probe fails and the breaker opens again.
    time.sleep(opened.value.retry_after + 0.05)
    with pytest.raises(TransientModelError):
        client.infer_texts(config, ["x"])
    assert client.breaker(config).snapshot().state == "open"

    model_server.faults.configure(hang=False)
    deadline = time.monotonic() + 10
    while True:
        try:
            result = client.infer_texts(config, ["a b c"])
            break
        except BreakerOpen as e:
            assert time.monotonic() < deadline
            time.sleep(e.retry_after + 0.01)
    assert result.outputs == [{"token_count": 3}]
    assert client.breaker(config).snapshot().state == "closed"


def test_half_open_admits_a_single_probe(model_server, client) -> None:
    config = endpoint(model_server, breaker=BreakerPolicy(failure_threshold=1, reset_timeout_s=0))
    breaker = client.breaker(config)
    breaker.record_failure()
    assert breaker.before_call().probe
    with pytest.raises(BreakerOpen) as exc:
        breaker.before_call()
    assert exc.value.state == "half_open"


def test_permanent_errors_do_not_open_the_breaker(model_server, client) -> None:
    config = endpoint(model_server, breaker=BreakerPolicy(failure_threshold=2, reset_timeout_s=60))
    for _ in range(5):
        with pytest.raises(PermanentModelError):
            client.infer_texts(config, ["bad!"], {"poison_marker": "!"})
    assert client.breaker(config).snapshot().state == "closed"


# ------------------------------------------------------------------------------ isolation


def test_bisection_quarantines_only_poison_records(model_server, client) -> None:
    texts = [f"record number {i}" for i in range(64)]
    poison = {5, 6, 40}
    for i in poison:
        texts[i] += " <<POISON>>"
    result = client.infer_texts_isolating(endpoint(model_server), texts, {"poison_marker": "<<POISON>>"})
    assert set(result.quarantined) == poison
    assert all("INVALID_ARGUMENT" in r and "poison marker" in r for r in result.quarantined.values())
    for i, out in enumerate(result.outputs):
        if i in poison:
            assert out is None
        else:
            assert out == {"token_count": count_tokens(texts[i])}
    assert result.succeeded + len(result.quarantined) == len(texts)
    assert result.prompt_tokens == sum(count_tokens(t) for i, t in enumerate(texts) if i not in poison)
    assert result.calls <= 1 + 8 * (64).bit_length() + 8
    assert result.stats.status_counts["INVALID_ARGUMENT"] > 0


def test_bisection_budget_bounds_extra_calls_and_counts_still_reconcile(model_server, client) -> None:
    texts = [f"r{i}" + (" BAD" if i % 3 == 0 else "") for i in range(30)]
    result = client.infer_texts_isolating(endpoint(model_server), texts, {"poison_marker": "BAD"}, max_extra_calls=4)
    assert result.calls <= 5
    assert result.succeeded + len(result.quarantined) == 30
    assert any(r.startswith("not isolated") for r in result.quarantined.values())
    assert all(result.outputs[i] is None for i in range(0, 30, 3))


def test_bisection_raises_config_errors_instead_of_quarantining(model_server, client) -> None:
    with pytest.raises(PermanentModelError) as exc:
        client.infer_texts_isolating(endpoint(model_server, "no-such-model"), ["a", "b"])
    assert exc.value.code == "NOT_FOUND"


# ---------------------------------------------------------------------- in-flight and TLS


class _SlowCounter(TextModel):
    """Counts concurrent predict calls to observe the client's in-flight bound."""

    name = "slow"
    outputs = ()

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.current = self.peak = 0

    def predict(self, texts: list[str], params: Params) -> Prediction:
        with self.lock:
            self.current += 1
            self.peak = max(self.peak, self.current)
        time.sleep(0.05)
        with self.lock:
            self.current -= 1
        return Prediction([OutputTensor("n", "INT64", [1] * len(texts), [len(texts)])], 0, 0)


def test_in_flight_calls_are_bounded_per_model_config(client) -> None:
    model = _SlowCounter()
    with running_server(models=[model]) as handle:
        config = endpoint(handle, "slow", max_in_flight=2)
        with ThreadPoolExecutor(12) as pool:
            list(pool.map(lambda _: client.infer_texts(config, ["x"]), range(24)))
        assert model.peak == 2


def test_mutual_tls(tls_material, client) -> None:
    files = TlsFiles(tls_material["server_cert"], tls_material["server_key"], tls_material["ca"])
    with running_server(tls=files) as handle:
        ok = TlsConfig(
            tls_material["ca"],
            tls_material["client_cert"],
            tls_material["client_key"],
            server_name="localhost",
        )
        result = client.infer_texts(endpoint(handle, tls=ok), ["secure words"])
        assert result.outputs == [{"token_count": 2}]
        no_client_cert = TlsConfig(tls_material["ca"], server_name="localhost")
        one_try = RetryPolicy(max_attempts=1)
        with pytest.raises(TransientModelError) as exc:
            client.infer_texts(endpoint(handle, tls=no_client_cert, retry=one_try), ["x"])
        assert exc.value.code == "UNAVAILABLE"
