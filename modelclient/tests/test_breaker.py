"""Breaker state machine over both stores, and a Redis breaker shared by separate clients."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from modelclient import (
    BreakerOpen,
    BreakerPolicy,
    InMemoryBreakerStore,
    ModelClient,
    ModelEndpoint,
    RedisBreakerStore,
    RetryPolicy,
    SqliteBreakerStore,
    TransientModelError,
)
from modelclient.breaker import CLOSED, HALF_OPEN, OPEN
from modelclient.channels import ChannelPool


class FakeClock:
    """Manual time for the in-memory store."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_and_advance(request, tmp_path):
    """(store, advance(seconds)) for each store; Redis time is real, so advance sleeps."""
    if request.param in ("memory", "sqlite"):
        clock = FakeClock()

        def advance(s: float) -> None:
            clock.now += s

        if request.param == "sqlite":
            return SqliteBreakerStore(tmp_path / "breaker.sqlite3", clock=clock), advance, 0.3
        return InMemoryBreakerStore(clock), advance, 0.3
    redis_client, prefix, _url = request.getfixturevalue("redis_namespace")
    return RedisBreakerStore(redis_client, prefix=prefix), lambda s: time.sleep(s), 0.3


def test_store_contract_closed_open_half_open_closed(store_and_advance) -> None:
    store, advance, reset = store_and_advance
    key = "ep/model@1"
    assert store.acquire(key, reset, 10).allowed
    assert store.record_failure(key, 3) == CLOSED
    assert store.record_failure(key, 3) == CLOSED
    store.record_success(key)  # consecutive failures: a success starts the count again
    assert store.snapshot(key, reset).failures == 0
    for _ in range(2):
        store.record_failure(key, 3)
    assert store.record_failure(key, 3) == OPEN
    refused = store.acquire(key, reset, 10)
    assert (refused.allowed, refused.state) == (False, OPEN)
    assert 0 < refused.retry_after <= reset

    advance(reset + 0.05)
    probe = store.acquire(key, reset, 10)
    assert (probe.allowed, probe.state, probe.probe) == (True, HALF_OPEN, True)
    second = store.acquire(key, reset, 10)
    assert (second.allowed, second.state) == (False, HALF_OPEN)
    assert store.record_failure(key, 3) == OPEN  # a failed probe re-opens at once

    advance(reset + 0.05)
    assert store.acquire(key, reset, 10).probe
    assert store.record_success(key) == CLOSED
    assert store.acquire(key, reset, 10).state == CLOSED
    assert store.snapshot(key, reset).state == CLOSED


def test_store_contract_a_lost_probe_is_replaced_after_its_lease(store_and_advance) -> None:
    store, advance, reset = store_and_advance
    key = "lost-probe"
    store.record_failure(key, 1)
    advance(reset + 0.05)
    assert store.acquire(key, reset, 0.2).probe  # this prober dies without reporting
    assert not store.acquire(key, reset, 0.2).allowed
    advance(0.3)
    assert store.acquire(key, reset, 0.2).probe


def test_redis_failure_counting_is_atomic_across_threads(redis_namespace) -> None:
    redis_client, prefix, _url = redis_namespace
    store = RedisBreakerStore(redis_client, prefix=prefix)
    with ThreadPoolExecutor(16) as pool:
        states = list(pool.map(lambda _: store.record_failure("race", 50), range(200)))
    assert store.snapshot("race", 60).failures == 200
    # Exactly one transition to open is observed at the threshold; later failures see open.
    assert states.count(CLOSED) == 49
    assert states.count(OPEN) == 151


def test_redis_breaker_is_shared_by_two_clients(model_server, redis_namespace) -> None:
    import redis

    _client, prefix, url = redis_namespace
    # Two clients with their own Redis connections and channel pools: as two workers would be.
    pools = [ChannelPool(), ChannelPool()]
    clients = [
        ModelClient(breaker_store=RedisBreakerStore(redis.Redis.from_url(url), prefix=prefix), channel_pool=p)
        for p in pools
    ]
    config = ModelEndpoint(
        model_server.address,
        "token-counter",
        deadline_s=0.3,
        retry=RetryPolicy(max_attempts=1),
        breaker=BreakerPolicy(failure_threshold=2, reset_timeout_s=0.5),
    )
    try:
        model_server.faults.configure(hang=True)
        for _ in range(2):
            with pytest.raises(TransientModelError, match="DEADLINE_EXCEEDED"):
                clients[0].infer_texts(config, ["x"])
        calls = model_server.faults.calls
        with pytest.raises(BreakerOpen) as exc:
            clients[1].infer_texts(config, ["x"])
        assert model_server.faults.calls == calls  # the second worker never reached the server

        model_server.faults.configure(hang=False)
        time.sleep(exc.value.retry_after + 0.05)
        assert clients[1].infer_texts(config, ["a b"]).outputs == [{"token_count": 2}]
        assert clients[0].breaker(config).snapshot().state == CLOSED
    finally:
        for p in pools:
            p.close()


def test_redis_store_fails_open_when_redis_is_down(caplog) -> None:
    import redis

    store = RedisBreakerStore(redis.Redis(port=1, socket_connect_timeout=0.5))
    assert store.acquire("k", 1, 1).allowed
    assert store.record_failure("k", 1) == CLOSED
    assert "failing open" in caplog.text
    strict = RedisBreakerStore(redis.Redis(port=1, socket_connect_timeout=0.5), fail_open=False)
    with pytest.raises(redis.RedisError):
        strict.acquire("k", 1, 1)


def _sqlite_failures(path: str, n: int) -> list[str]:
    """Worker-process body: record n failures against a shared SQLite store."""
    store = SqliteBreakerStore(path)
    return [store.record_failure("race", 50) for _ in range(n)]


def test_sqlite_failure_counting_is_atomic_across_processes(tmp_path) -> None:
    import multiprocessing

    path = str(tmp_path / "breaker.sqlite3")
    SqliteBreakerStore(path)  # create the schema once before the race
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = pool.starmap(_sqlite_failures, [(path, 50)] * 4)
    states = [s for chunk in results for s in chunk]
    assert SqliteBreakerStore(path).snapshot("race", 60).failures == 200
    assert states.count(CLOSED) == 49
    assert states.count(OPEN) == 151


def test_sqlite_breaker_is_shared_by_two_clients(model_server, tmp_path) -> None:
    path = tmp_path / "breaker.sqlite3"
    config = ModelEndpoint(
        model_server.address,
        "token-counter",
        deadline_s=0.3,
        retry=RetryPolicy(max_attempts=1),
        breaker=BreakerPolicy(failure_threshold=2, reset_timeout_s=60),
    )
    a = ModelClient(breaker_store=SqliteBreakerStore(path), channel_pool=ChannelPool())
    b = ModelClient(breaker_store=SqliteBreakerStore(path), channel_pool=ChannelPool())
    model_server.faults.configure(hang=True)
    for _ in range(2):
        with pytest.raises(TransientModelError):
            a.infer_texts(config, ["x"])
    # b never failed, yet it sees the breaker a opened and does not call the server.
    calls = model_server.faults.calls
    with pytest.raises(BreakerOpen) as info:
        b.infer_texts(config, ["x"])
    assert info.value.retry_after > 50
    assert model_server.faults.calls == calls


def test_sqlite_store_fails_open_on_an_unusable_file(tmp_path, caplog) -> None:
    store = SqliteBreakerStore(tmp_path / "breaker.sqlite3")
    store._conn().execute("DROP TABLE breaker")  # a broken store must not stop inference
    assert store.acquire("k", 1, 1).allowed
    assert store.record_failure("k", 1) == CLOSED
    assert "failing open" in caplog.text


# ---- ClosedStateCache (the gateway's event loop) ------------------------------------------------------------
class CountingStore:
    """A store that counts the calls reaching it."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def acquire(self, key, reset_timeout_s, probe_timeout_s):
        self.calls.append("acquire")
        return self.inner.acquire(key, reset_timeout_s, probe_timeout_s)

    def record_success(self, key):
        self.calls.append("success")
        return self.inner.record_success(key)

    def record_failure(self, key, threshold):
        self.calls.append("failure")
        return self.inner.record_failure(key, threshold)

    def snapshot(self, key, reset_timeout_s):
        return self.inner.snapshot(key, reset_timeout_s)

    def reset(self, key):
        self.inner.reset(key)


def test_closed_state_cache_asks_the_store_once_per_ttl_while_closed() -> None:
    from modelclient.breaker import ClosedStateCache

    clock = FakeClock()
    store = CountingStore(InMemoryBreakerStore(clock))
    cache = ClosedStateCache(store, ttl_s=0.25, clock=clock)
    key = "ep/model@1"
    for _ in range(20):
        assert cache.acquire(key, 5, 10).allowed
        assert cache.record_success(key) == CLOSED
        clock.now += 0.01
    assert store.calls == ["acquire", "success"]
    clock.now += 0.25
    assert cache.acquire(key, 5, 10).allowed
    assert cache.record_success(key) == CLOSED
    assert store.calls == ["acquire", "success", "acquire", "success"]


def test_closed_state_cache_never_hides_this_process_failures() -> None:
    from modelclient.breaker import ClosedStateCache

    clock = FakeClock()
    store = CountingStore(InMemoryBreakerStore(clock))
    cache = ClosedStateCache(store, ttl_s=0.25, clock=clock)
    key = "ep/model@1"
    assert cache.acquire(key, 5, 10).allowed
    cache.record_success(key)
    # Every failure is written, and the next call asks the store again.
    assert cache.record_failure(key, 2) == CLOSED
    assert cache.acquire(key, 5, 10).allowed
    assert store.calls == ["acquire", "success", "failure", "acquire"]
    assert cache.record_failure(key, 2) == OPEN
    permit = cache.acquire(key, 5, 10)
    assert not permit.allowed and permit.state == OPEN
    # Half-open is never cached: one probe, the next call is refused until the probe reports.
    clock.now += 5
    assert cache.acquire(key, 5, 10).probe
    assert not cache.acquire(key, 5, 10).allowed
    assert cache.record_success(key) == CLOSED
    assert cache.acquire(key, 5, 10).allowed


def test_closed_state_cache_sees_a_breaker_opened_elsewhere_within_ttl(redis_namespace) -> None:
    """Another process (its own RedisBreakerStore) opens the shared breaker: this one admits calls for at most
    the cache's ttl, then refuses them."""
    from modelclient.breaker import ClosedStateCache

    redis_client, prefix, _url = redis_namespace
    clock = FakeClock()
    cache = ClosedStateCache(RedisBreakerStore(redis_client, prefix=prefix), ttl_s=0.25, clock=clock)
    other = RedisBreakerStore(redis_client, prefix=prefix)
    key = "ep/model@1"
    assert cache.acquire(key, 30, 60).allowed
    for _ in range(3):
        other.record_failure(key, 3)
    assert other.snapshot(key, 30).state == OPEN
    clock.now += 0.2
    assert cache.acquire(key, 30, 60).allowed  # still within the ttl
    clock.now += 0.05
    permit = cache.acquire(key, 30, 60)
    assert not permit.allowed and permit.state == OPEN


def test_model_client_breaker_cached_shares_one_cache_over_the_client_store() -> None:
    from modelclient.breaker import ClosedStateCache

    client = ModelClient(breaker_store=InMemoryBreakerStore())
    config = ModelEndpoint(endpoint="127.0.0.1:1", model_name="m")
    first, second = client.breaker(config, cached=True), client.breaker(config, cached=True)
    assert isinstance(first.store, ClosedStateCache) and first.store is second.store
    assert first.store.store is client.breaker_store
    assert client.breaker(config).store is client.breaker_store
