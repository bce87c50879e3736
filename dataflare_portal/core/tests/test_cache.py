"""The Redis cache backend: one client per pool, shared by threads and working after a fork (real Redis)."""

import os
import threading
import uuid

import pytest

from conftest import redis_url
from dataflare_portal.core.cache import RedisCache

pytestmark = pytest.mark.skipif(redis_url() is None, reason="the run has no Redis (embedded default)")


@pytest.fixture
def cache():
    backend = RedisCache(redis_url(), {"KEY_PREFIX": f"test-cache-{uuid.uuid4().hex}"})
    yield backend
    client = backend._cache.get_client(write=True)
    keys = list(client.scan_iter(match=f"{backend.key_prefix}*"))
    if keys:
        client.delete(*keys)
    backend.close()


def test_every_call_shares_one_client_per_pool(cache):
    client = cache._cache.get_client()
    cache.set("a", 1)
    assert cache.get("a") == 1
    assert cache._cache.get_client() is client
    assert cache._cache.get_client(write=True) is client  # one server: one pool, read or write


def test_threads_share_the_client_and_each_gets_its_own_answers(cache):
    errors = []

    def work(n: int) -> None:
        try:
            for i in range(100):
                cache.set(f"t{n}-{i}", {"n": n, "i": i}, 60)
                assert cache.get(f"t{n}-{i}") == {"n": n, "i": i}
                assert cache.incr(f"count-{n}") == i + 1
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    for n in range(8):
        cache.set(f"count-{n}", 0)
    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(cache.get(f"count-{n}") == 100 for n in range(8))
    assert cache.get_many([f"t3-{i}" for i in range(100)])["t3-99"] == {"n": 3, "i": 99}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_process_uses_its_own_connections(cache):
    cache.set("before-fork", "parent")
    pid = os.fork()
    if pid == 0:  # the child: the shared client reconnects (its pool checks the pid), not the parent's socket
        code = 1
        try:
            if cache.get("before-fork") == "parent":
                cache.set("from-child", os.getpid())
                code = 0
        finally:
            os._exit(code)
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert cache.get("from-child") == pid
    assert cache.get("before-fork") == "parent"  # the parent's connection still answers in order
