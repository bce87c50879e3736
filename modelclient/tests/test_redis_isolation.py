"""The tests' Redis is the one the run was given, and they delete only the keys they wrote."""

import re

from .conftest import configured_redis_url, redis_run_namespace


def test_the_redis_of_the_tests_comes_from_the_configuration(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/7")
    monkeypatch.setenv("TEST_REDIS_DB", "3")
    assert configured_redis_url() == "redis://127.0.0.1:6379/7"
    monkeypatch.delenv("REDIS_URL")
    assert configured_redis_url() == "redis://127.0.0.1:6379/3"
    monkeypatch.delenv("TEST_REDIS_DB")
    assert configured_redis_url() is None  # no Redis given: the Redis tests skip, none is assumed


def test_a_test_namespace_deletes_only_its_own_keys(redis_namespace):
    client, _prefix, url = redis_namespace
    assert client.connection_pool.connection_kwargs["db"] == int(url.rsplit("/", 1)[1] or 0)
    foreign = "dataflare-test-isolation:someone-else's-key"
    client.set(foreign, "keep", ex=60)
    try:
        with redis_run_namespace(url) as (inner, prefix):
            inner.set(prefix + "a", "1")
            inner.hset(prefix + "b", mapping={"x": "1"})
            assert inner.exists(prefix + "a", prefix + "b") == 2
        assert client.exists(prefix + "a", prefix + "b") == 0
        assert client.get(foreign) == b"keep"
    finally:
        client.delete(foreign)


def test_no_modelclient_test_flushes_or_hard_codes_a_redis_database():
    from pathlib import Path

    for path in Path(__file__).parent.glob("*.py"):
        if path.name == Path(__file__).name:
            continue
        text = path.read_text()
        assert "flushdb" not in text and "flushall" not in text, path.name
        assert not re.search(r"\bdb\s*=\s*\d", text), f"{path.name} names a Redis database"
