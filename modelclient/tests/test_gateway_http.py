"""The gateway's async pass-through (aiohttp) against the reference server's real HTTP face on loopback."""

from __future__ import annotations

import asyncio

import grpc
import orjson
import pytest

from modelclient import (
    EndpointRefused,
    InMemoryBreakerStore,
    ModelClient,
    ModelEndpoint,
    PermanentModelError,
    RetryPolicy,
    TlsConfig,
    TransientModelError,
)
from modelclient.client import CallStats
from modelclient.gateway_http import AsyncHttpPool, EventSplitter, StreamResult, acall_json, astream
from modelserver.server import TlsFiles
from modelserver.testing import running_server

FAST_RETRY = RetryPolicy(max_attempts=3, backoff_base_s=0.001, backoff_max_s=0.01)
CHAT = {"model": "annotator", "messages": [{"role": "user", "content": "The central bank held rates steady."}]}


def _config(base: str, **kw) -> ModelEndpoint:
    kw.setdefault("retry", FAST_RETRY)
    kw.setdefault("deadline_s", 5.0)
    return ModelEndpoint(base, "annotator", protocol="openai", **kw)


def _run(coro_fn):
    """Run one async test body with its own pool, closed on the same loop."""

    async def body():
        pool = AsyncHttpPool(resolver=lambda host, port: ["127.0.0.1"])
        try:
            return await coro_fn(pool)
        finally:
            await pool.aclose()

    return asyncio.run(body())


def test_calls_and_streams_dial_the_guards_answer_and_reuse_one_connection(openai_server) -> None:
    asked = []

    def resolver(host: str, port: int) -> list[str]:
        asked.append(host)
        return ["127.0.0.1"]

    async def body():
        pool = AsyncHttpPool(resolver=resolver)
        client = ModelClient(breaker_store=InMemoryBreakerStore())
        # model.invalid resolves nowhere (RFC 6761): only the guard's answer can be dialled.
        config = _config(f"http://model.invalid:{openai_server.http.port}/v1")
        try:
            answers = [await acall_json(client, config, "chat/completions", CHAT, pool=pool) for _ in range(3)]
            result = StreamResult()
            events = [
                e
                async for e in astream(client, config, "chat/completions", CHAT, result, forward_usage=False, pool=pool)
            ]
            _session, backend = await pool.get(config)
            return answers, events, result, backend.pinned.dialled
        finally:
            await pool.aclose()

    answers, events, result, dialled = asyncio.run(body())
    assert all(a["usage"]["completion_tokens"] > 0 for a in answers)
    assert asked == ["model.invalid"]
    assert dialled == ["127.0.0.1"]  # four calls, one connection kept alive
    assert events[-1] == b"data: [DONE]\n\n"
    assert not any(b'"usage"' in e and b'"choices":[]' in e for e in events)  # not asked for: not passed on
    assert result.usage_reported and result.completion_tokens > 0 and result.model_name == "annotator"
    assert openai_server.http.usage.completion_tokens == sum(a["usage"]["completion_tokens"] for a in answers) + (
        result.completion_tokens
    )


def test_a_refused_address_is_never_dialled(openai_server) -> None:
    def guard(host: str, port: int) -> list[str]:
        raise EndpointRefused(f"{host} resolves to a private address")

    async def body():
        pool = AsyncHttpPool(resolver=guard)
        try:
            with pytest.raises(EndpointRefused):
                await acall_json(
                    ModelClient(), _config(openai_server.http.base_url), "chat/completions", CHAT, pool=pool
                )
            with pytest.raises(EndpointRefused):
                async for _event in astream(
                    ModelClient(),
                    _config(openai_server.http.base_url),
                    "chat/completions",
                    CHAT,
                    StreamResult(),
                    forward_usage=True,
                    pool=pool,
                ):
                    pass
        finally:
            await pool.aclose()

    asyncio.run(body())
    assert openai_server.faults.calls == 0 and openai_server.http.usage.requests == 0


def test_503s_are_retried_and_a_400_is_not(openai_server) -> None:
    client = ModelClient(breaker_store=InMemoryBreakerStore())
    config = _config(openai_server.http.base_url)
    openai_server.faults.configure(error_rate=1.0, error_code=grpc.StatusCode.UNAVAILABLE)
    stats = CallStats()

    async def failing(pool):
        with pytest.raises(TransientModelError) as info:
            await acall_json(client, config, "chat/completions", CHAT, pool=pool, stats=stats)
        return info.value

    error = _run(failing)
    assert error.attempts == 3 and stats.attempts == 3
    openai_server.faults.configure(error_rate=0.0)
    before = openai_server.faults.calls

    async def bad_request(pool):
        with pytest.raises(PermanentModelError):
            await acall_json(client, config, "chat/completions", {"model": "annotator"}, pool=pool)

    _run(bad_request)
    assert openai_server.faults.calls - before <= 1


def test_tls_is_checked_against_the_host_name_while_dialling_the_approved_ip(tls_for_rebind_name) -> None:
    tls = TlsFiles(tls_for_rebind_name["server_cert"], tls_for_rebind_name["server_key"])
    trusted = TlsConfig(root_certs=tls_for_rebind_name["ca"])
    with running_server(http_port=0, tls=tls) as handle:
        client = ModelClient(breaker_store=InMemoryBreakerStore())
        good = _config(f"https://model.rebind.test:{handle.http.port}/v1", tls=trusted)
        # The same server under another name fails the certificate check: the name is what TLS checks.
        other = _config(f"https://other.rebind.test:{handle.http.port}/v1", tls=trusted, retry=RetryPolicy(1))

        async def body(pool):
            answer = await acall_json(client, good, "chat/completions", CHAT, pool=pool)
            with pytest.raises(TransientModelError):
                await acall_json(client, other, "chat/completions", CHAT, pool=pool)
            return answer

        assert _run(body)["choices"][0]["message"]["content"]


def test_sessions_of_ended_event_loops_are_closed_and_forgotten(openai_server) -> None:
    """Under WSGI every gateway call runs on an event loop of its own: the pool must not keep one session per loop."""
    pool = AsyncHttpPool(resolver=lambda host, port: ["127.0.0.1"])
    client = ModelClient(breaker_store=InMemoryBreakerStore())
    config = _config(openai_server.http.base_url)

    async def one_call(close: bool):
        await acall_json(client, config, "chat/completions", CHAT, pool=pool)
        session = next(iter(pool._slots.values())).client
        if close:  # what the gateway's views do under WSGI at the end of a call
            await pool.aclose_loop()
        return session

    closed = asyncio.run(one_call(True))
    assert closed.closed and not pool._slots
    # A loop that ended without closing its session: the next loop's first call closes and forgets it.
    sessions = [asyncio.run(one_call(False)) for _ in range(2)]
    assert len(pool._slots) == 1 and sessions[0].closed and not sessions[1].closed
    asyncio.run(pool.aclose())
    assert sessions[1].closed


# ---- server-sent events out of network pieces (the relay's coalescing) -----------------------------------------
def _chunk(text: str) -> bytes:
    obj = {"model": "m", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    return b"data: " + orjson.dumps(obj) + b"\n\n"


USAGE = b'data: {"model":"m","choices":[],"usage":{"prompt_tokens":4,"completion_tokens":2}}\n\n'
DONE = b"data: [DONE]\n\n"


@pytest.mark.parametrize("forward_usage", [False, True])
def test_a_pieces_events_come_together_and_its_end_is_held_even_beside_content(forward_usage) -> None:
    """Content, the usage chunk and [DONE] in one piece: the content comes out at once, the end (the usage chunk
    when asked for, [DONE]) is held in result.end, and the usage is read either way."""
    result = StreamResult()
    splitter = EventSplitter(result, forward_usage=forward_usage, hold_end=True)
    assert splitter.feed(_chunk("a") + _chunk("b") + USAGE + DONE) == [_chunk("a"), _chunk("b")]
    assert result.end == ([USAGE, DONE] if forward_usage else [DONE])
    assert (result.prompt_tokens, result.completion_tokens, result.usage_reported) == (4, 2, True)
    assert splitter.close() is None


def test_once_the_end_began_every_later_event_is_held() -> None:
    result = StreamResult()
    splitter = EventSplitter(result, forward_usage=False, hold_end=True)
    assert splitter.feed(_chunk("a") + USAGE) == [_chunk("a")]  # the hidden usage chunk: nothing to hold yet
    assert splitter.feed(_chunk("late") + DONE) == []  # after the usage: the end, though it is content
    assert result.end == [_chunk("late"), DONE]


def test_an_event_split_across_pieces_comes_out_whole_once() -> None:
    """A piece ending mid-event, then one ending between the two newlines of an event's blank line."""
    result = StreamResult()
    splitter = EventSplitter(result, forward_usage=True, hold_end=True)
    whole = _chunk("first") + _chunk("second") + USAGE + DONE
    cut_mid, cut_blank = 10, len(_chunk("first")) + len(_chunk("second")) - 1
    assert splitter.feed(whole[:cut_mid]) is None
    assert splitter.feed(whole[cut_mid:cut_blank]) == [_chunk("first")]
    assert splitter.feed(whole[cut_blank:]) == [_chunk("second")]
    assert result.end == [USAGE, DONE] and result.model_name == "m"


def test_without_hold_end_every_event_passes_in_order_and_an_unterminated_last_one_too() -> None:
    result = StreamResult()
    splitter = EventSplitter(result, forward_usage=False)
    assert splitter.feed(_chunk("a") + USAGE + DONE + b'data: {"choices": []}') == [_chunk("a"), DONE]
    assert splitter.close() == [b'data: {"choices": []}\n\n'] and result.end == []


def test_where_the_pieces_are_cut_changes_nothing_passed_on_held_or_read() -> None:
    """The same stream cut at every offset pair into three pieces gives the bytes, the held end and the usage of the
    stream read in one piece."""
    stream = (
        b'data: {"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
        + b"".join(_chunk(t) for t in ("Hel", "lo", " wor", "ld"))
        + b": keep-alive\n\n"
        + _chunk("!")
        + USAGE
        + DONE
    )

    def run(cuts: tuple[int, int]) -> tuple[bytes, list[bytes], int]:
        result = StreamResult()
        splitter = EventSplitter(result, forward_usage=False, hold_end=True)
        out = b""
        a, b = cuts
        for piece in (stream[:a], stream[a:b], stream[b:]):
            out += b"".join(splitter.feed(piece) or [])
        out += b"".join(splitter.close() or [])
        return out, list(result.end), result.completion_tokens

    whole = run((0, 0))
    assert whole[0].endswith(_chunk("!")) and whole[1] == [DONE] and whole[2] == 2
    for a in range(0, len(stream), 5):
        for b in range(a, len(stream), 5):
            assert run((a, b)) == whole, (a, b)
