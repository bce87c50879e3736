"""Async pass-through to OpenAI-compatible endpoints for the portal's gateway (docs/models.md, "The gateway").

The gateway forwards a client's own request body (messages with their roles, tools, sampling knobs) to the
model config's server, so it cannot go through `ModelClient.infer_texts`, which builds the body from records.
It keeps everything else of that client: the same `ModelEndpoint` (deadline, retry policy, in-flight bound,
breaker policy), the same shared breaker (`ModelClient.breaker`, its closed state cached for a moment: see
`ClosedStateCache`), the same per-process in-flight semaphore, the same HTTP status classification and
Retry-After rule (`openai_http`), and the same SSRF guard — every connection dials an address the resolver
approved, while TLS and the Host header keep the name.

It is async so that a streamed answer holds no thread while it waits for the next token: under an ASGI server
one event loop serves every open stream. The HTTP client is aiohttp's (`ClientSession` over a `TCPConnector`
whose resolver is the guard, one per model config per event loop, connections kept alive): measured against the
reference server on loopback it costs ~0.2 ms of CPU per call and ~0.3 ms per short stream, httpx's
`AsyncClient` ~0.85 ms and ~1.2 ms (its httpcore pool checks each idle socket with a `select` per request and
runs the pure-Python h11 parser; aiohttp parses with llhttp in C). The `openai` package's async client is httpx
underneath with pydantic models on top, so it could only be slower for a pass-through that forwards bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver, ResolveResult

from .breaker import OPEN
from .client import CallStats, ModelClient
from .config import ModelEndpoint
from .errors import (
    BreakerOpen,
    EndpointRefused,
    EndpointUnresolved,
    InFlightLimitTimeout,
    PermanentModelError,
    TransientModelError,
)
from .openai_http import (
    MAX_RESPONSE_BYTES,
    AttemptFailed,
    PinnedBackend,
    _classify_status,
    _error_text,
    _ssl_context,
    base_url_parts,
    parse_retry_after,
)

__all__ = [
    "AsyncHttpPool",
    "EventSplitter",
    "StreamResult",
    "acall_json",
    "astream",
    "astream_pieces",
    "default_async_pool",
]


class AsyncPinnedBackend(AbstractResolver):
    """aiohttp resolver that answers only approved addresses (the sync PinnedBackend's approval cache).

    The connector dials the address this returns and keeps `hostname` (the URL's name) for TLS (SNI and the
    certificate check) and the Host header. An IP literal in the URL never reaches a resolver in aiohttp; the pool
    approves every endpoint's (host, port) before each call (`AsyncHttpPool.get`), literals included.
    """

    def __init__(self, pinned: PinnedBackend) -> None:
        self.pinned = pinned

    async def approved(self, host: str, port: int) -> list[str]:
        """Approved addresses; a due lookup (DNS + guard) runs in a thread so the event loop never blocks on it."""
        pinned = self.pinned
        hit = pinned._approved.get((host, port))
        if hit is not None and pinned._clock() - hit[1] < pinned.recheck_s:
            return hit[0]
        return await asyncio.to_thread(pinned.approved, host, port)

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET):
        addresses = await self.approved(host, int(port))
        self.pinned.dialled.extend(addresses[:1])
        del self.pinned.dialled[:-100]
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=int(port),
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        return None


@dataclass
class _Slot:
    spec: tuple
    client: aiohttp.ClientSession
    backend: AsyncPinnedBackend
    loop: asyncio.AbstractEventLoop


class AsyncHttpPool:
    """One pinned aiohttp session per model config per event loop (rebuilt when the endpoint changes)."""

    def __init__(self, *, resolver=None, recheck_s: float = 30.0) -> None:
        self._slots: dict[tuple, _Slot] = {}
        self._pid = os.getpid()
        self._resolver = resolver
        self.recheck_s = recheck_s

    def _current_resolver(self):
        from .channels import _current_default_resolver

        return self._resolver or _current_default_resolver()

    async def get(self, config: ModelEndpoint) -> tuple[aiohttp.ClientSession, AsyncPinnedBackend]:
        """The config's session on this loop; the host is resolved and checked first (EndpointRefused/Unresolved)."""
        scheme, host, port = base_url_parts(config.endpoint)
        loop = asyncio.get_running_loop()
        if os.getpid() != self._pid:
            self._slots, self._pid = {}, os.getpid()
        owner = (id(loop), config.config_id or (config.endpoint, config.tls))
        spec = (config.endpoint, config.tls, config.max_in_flight)
        slot = self._slots.get(owner)
        if slot is None or slot.spec != spec or slot.client.closed:
            if slot is not None:
                await slot.client.close()
            # Sessions of event loops that have ended (under WSGI each call runs on a loop of its own) are closed and
            # forgotten, so they do not pile up with their loops.
            for stale_owner, stale in list(self._slots.items()):
                if stale.loop.is_closed():
                    del self._slots[stale_owner]
                    await stale.client.close()
            pinned = PinnedBackend(self._current_resolver, recheck_s=self.recheck_s)
            backend = AsyncPinnedBackend(pinned)
            # Connections per config: the in-flight bound (a stream holds its slot and its connection). No DNS
            # cache of aiohttp's own: every new connection asks the guard (which keeps approvals `recheck_s`).
            connector = aiohttp.TCPConnector(
                resolver=backend,
                use_dns_cache=False,
                limit=max(1, config.max_in_flight),
                limit_per_host=0,
                keepalive_timeout=60.0,
                ssl=_ssl_context(config.tls) if scheme == "https" else False,
            )
            client = aiohttp.ClientSession(connector=connector, trust_env=False)
            slot = self._slots[owner] = _Slot(spec, client, backend, loop)
        await slot.backend.approved(host, port)
        return slot.client, slot.backend

    def invalidate(self, config: ModelEndpoint) -> None:
        """Resolve and check again before the next connection (the last one failed)."""
        _scheme, host, port = base_url_parts(config.endpoint)
        for owner, slot in self._slots.items():
            if owner[1] == (config.config_id or (config.endpoint, config.tls)):
                slot.backend.pinned.forget(host, port)

    async def aclose_loop(self) -> None:
        """Close the sessions of the running event loop (one that ends after this call: Django's WSGI handler)."""
        loop = asyncio.get_running_loop()
        for owner, slot in list(self._slots.items()):
            if slot.loop is loop:
                del self._slots[owner]
                await slot.client.close()

    async def aclose(self) -> None:
        slots, self._slots = list(self._slots.values()), {}
        for slot in slots:
            await slot.client.close()


_default_async_pool = AsyncHttpPool()


def default_async_pool() -> AsyncHttpPool:
    """The process-wide async pool."""
    return _default_async_pool


def _headers(config: ModelEndpoint, accept: str) -> dict[str, str]:
    headers = {"accept": accept}
    if config.api_key:
        headers["authorization"] = f"Bearer {config.api_key}"
    return headers


def _request_options(config: ModelEndpoint, timeout_s: float | None) -> dict[str, Any]:
    """aiohttp request arguments: no redirects, the attempt's timeout, the TLS name override."""
    options: dict[str, Any] = {
        "allow_redirects": False,
        "timeout": aiohttp.ClientTimeout(total=timeout_s),
    }
    if config.tls is not None and config.tls.server_name:
        options["server_hostname"] = config.tls.server_name
    return options


async def _acquire(sem, config: ModelEndpoint, attempt: int) -> None:
    """Take an in-flight slot of the process-wide semaphore (shared with sync calls) without blocking the loop."""
    deadline = time.monotonic() + config.deadline_s
    delay = 0.001
    while not sem.acquire(blocking=False):
        if time.monotonic() >= deadline:
            raise InFlightLimitTimeout(
                f"no in-flight slot within {config.deadline_s}s (max_in_flight={config.max_in_flight})",
                code="IN_FLIGHT_LIMIT",
                model=config.key,
                attempts=attempt - 1,
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


async def _attempt_failure(response: aiohttp.ClientResponse) -> AttemptFailed:
    """An HTTP error status as AttemptFailed (the same classification as the sync client)."""
    raw = b""
    async for chunk in response.content.iter_any():
        raw += chunk
        if len(raw) > 65536:
            break
    status = response.status
    code, kind = _classify_status(status)
    too_large = status == 413
    return AttemptFailed(
        "MESSAGE_TOO_LARGE" if too_large else code,
        _error_text(status, raw),
        kind,
        retry_after=parse_retry_after(response.headers) if kind == "retry" else None,
        too_large=too_large,
        http_status=status,
    )


# Backoff jitter needs no fresh seed per call (random.Random() reads os.urandom: measurable per gateway call).
_BACKOFF_RNG = random.Random()
os.register_at_fork(after_in_child=_BACKOFF_RNG.seed)  # forked workers must not share one jitter sequence


async def _with_retries(
    client: ModelClient,
    config: ModelEndpoint,
    pool: AsyncHttpPool,
    attempt_fn: Callable[[aiohttp.ClientSession, float], Awaitable[Any]],
    stats: CallStats,
    *,
    hold_slot: bool = False,
    rng: random.Random | None = None,
) -> Any:
    """ModelClient._call's policy, async: breaker, in-flight bound, bounded retries with backoff/Retry-After.

    With `hold_slot` the in-flight slot stays taken on success (a stream releases it when it ends):
    the result is (value, release).
    """
    rng = rng or _BACKOFF_RNG
    try:
        http: aiohttp.ClientSession | None = (await pool.get(config))[0]
        unresolved: EndpointUnresolved | None = None
    except EndpointRefused as e:
        e.model, e.attempts = config.key, 0
        raise
    except EndpointUnresolved as e:
        http, unresolved = None, e
    breaker = client.breaker(config, cached=True)
    breaker.before_call()
    stats.calls += 1
    sem = client._semaphore(config)
    for attempt in range(1, config.retry.max_attempts + 1):
        if attempt > 1:
            snap = breaker.snapshot()
            if snap.state == OPEN:
                raise BreakerOpen(config.key, snap.retry_after, snap.state)
        try:
            if unresolved is not None:
                raise unresolved
            http = http or (await pool.get(config))[0]
        except EndpointRefused as e:
            breaker.record_failure()
            e.model, e.attempts = config.key, attempt - 1
            raise
        except EndpointUnresolved as e:
            unresolved = None
            code, details, kind, retry_after, too_large = "UNAVAILABLE", e.message, "retry", None, False
            stats.record(code, 0.0)
        else:
            await _acquire(sem, config, attempt)
            started = time.perf_counter()
            keep = False
            try:
                # asyncio.timeout, not wait_for: wait_for runs the attempt as a task of its own (Python 3.11),
                # a task created and scheduled per call.
                async with asyncio.timeout(config.deadline_s):
                    value = await attempt_fn(http, config.deadline_s)
            except AttemptFailed as e:
                code, details, kind, retry_after, too_large = e.code, e.details, e.kind, e.retry_after, e.too_large
                stats.record(code, time.perf_counter() - started)
            except TimeoutError:  # aiohttp's ServerTimeoutError is one too
                code, details, kind = "DEADLINE_EXCEEDED", f"no answer within {config.deadline_s:g}s", "transient"
                retry_after, too_large = None, False
                stats.record(code, time.perf_counter() - started)
            except aiohttp.ClientConnectionError as exc:
                code, details, kind, retry_after, too_large = (
                    "UNAVAILABLE",
                    f"cannot connect: {exc}",
                    "retry",
                    None,
                    False,
                )
                stats.record(code, time.perf_counter() - started)
            except aiohttp.ClientError as exc:
                code, details, kind = "UNKNOWN", f"{type(exc).__name__}: {exc}", "transient"
                retry_after, too_large = None, False
                stats.record(code, time.perf_counter() - started)
            except EndpointRefused as e:
                breaker.record_failure()
                e.model, e.attempts = config.key, attempt
                raise
            else:
                stats.record("OK", time.perf_counter() - started)
                breaker.record_success()
                if hold_slot:
                    keep = True
                    return value, sem.release
                return value
            finally:
                if not keep:
                    sem.release()
            if code == "UNAVAILABLE":
                pool.invalidate(config)
                http = None
        err_kw = {"code": code, "model": config.key, "attempts": attempt}
        if kind == "permanent":
            breaker.record_success()
            raise PermanentModelError(details, message_too_large=too_large, **err_kw)
        if kind == "retry" and attempt < config.retry.max_attempts:
            r = config.retry
            factor = r.resource_exhausted_factor if code == "RESOURCE_EXHAUSTED" else 1
            delay = rng.uniform(0, min(r.backoff_max_s, r.backoff_base_s * factor * 2 ** (attempt - 1)))
            if retry_after is not None:
                limit = max(r.backoff_max_s, config.deadline_s)
                if retry_after > limit:
                    breaker.record_failure()
                    raise TransientModelError(
                        f"server asked to retry after {retry_after:g}s (more than {limit:g}s): {details}", **err_kw
                    )
                delay = max(delay, retry_after)
            stats.backoff_s += delay
            await asyncio.sleep(delay)
            continue
        breaker.record_failure()
        if kind == "retry":
            details = f"gave up after {attempt} attempts: {details}"
        raise TransientModelError(details, **err_kw)
    raise AssertionError("unreachable")


async def acall_json(
    client: ModelClient,
    config: ModelEndpoint,
    path: str,
    body: Mapping[str, Any] | None,
    *,
    method: str = "POST",
    pool: AsyncHttpPool | None = None,
    stats: CallStats | None = None,
) -> dict[str, Any]:
    """One logical call (with retries) returning the JSON answer; raises ModelError subclasses."""
    pool = pool or default_async_pool()
    url = config.endpoint.rstrip("/") + "/" + path
    content = orjson.dumps(dict(body)) if body is not None else None

    async def attempt(http: aiohttp.ClientSession, timeout_s: float) -> dict[str, Any]:
        headers = _headers(config, "application/json")
        if content is not None:
            headers["content-type"] = "application/json"
        response = await http.request(method, url, headers=headers, data=content, **_request_options(config, timeout_s))
        try:
            if response.status >= 400:
                raise await _attempt_failure(response)
            raw = bytearray()
            async for chunk in response.content.iter_any():
                raw += chunk
                if len(raw) > MAX_RESPONSE_BYTES:
                    raise AttemptFailed("RESOURCE_EXHAUSTED", "response larger than 64 MiB", "permanent")
        finally:
            response.release()
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise AttemptFailed("BAD_RESPONSE", "the answer is not JSON", "permanent") from None
        if not isinstance(data, dict):
            raise AttemptFailed("BAD_RESPONSE", "the answer is not a JSON object", "permanent")
        return data

    return await _with_retries(client, config, pool, attempt, stats if stats is not None else CallStats())


@dataclass
class StreamResult:
    """What a finished stream reported: usage (when the server sent it) and how it ended.

    `end` holds the stream's end when `astream_pieces` was asked to hold it back (`hold_end`).
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_reported: bool = False
    model_name: str = ""
    error: str = ""
    error_code: str = ""
    chunks: int = 0
    stats: CallStats = field(default_factory=CallStats)
    end: list[bytes] = field(default_factory=list)


async def astream(
    client: ModelClient,
    config: ModelEndpoint,
    path: str,
    body: Mapping[str, Any],
    result: StreamResult,
    *,
    forward_usage: bool,
    pool: AsyncHttpPool | None = None,
) -> AsyncIterator[bytes]:
    """Open a server-sent-event stream (retried until the server answers 200), then yield each event as is.

    The server is asked for usage (`stream_options.include_usage`) so the gateway can meter the stream;
    the usage-only chunk is passed on only when the caller asked for it (`forward_usage`). The call's
    deadline bounds the wait for the answer's head and for each event after it (a stream may last longer
    than one deadline, but never sit silent for longer). Errors before the head raise ModelError subclasses;
    errors after it end the stream and are left in `result.error`. (`astream_pieces` is the same stream with the
    events of one network piece together.)
    """
    pieces = astream_pieces(client, config, path, body, result, forward_usage=forward_usage, pool=pool)
    async with contextlib.aclosing(pieces):
        async for events in pieces:
            for event in events:
                yield event


async def astream_pieces(
    client: ModelClient,
    config: ModelEndpoint,
    path: str,
    body: Mapping[str, Any],
    result: StreamResult,
    *,
    forward_usage: bool,
    hold_end: bool = False,
    pool: AsyncHttpPool | None = None,
) -> AsyncIterator[list[bytes]]:
    """`astream`'s events, one list per network piece read: the events that piece completed (possibly none).

    A relay that sends each list as one write pays its per-write cost (a generator step, an ASGI send, a socket
    write) once per piece instead of once per event: when it falls behind a fast server, the events that queued
    meanwhile go out together. With `hold_end` the stream's end — the first event passed on once the usage is
    known (the usage chunk, or the event after the hidden one) or `[DONE]`, and every event after it — is not
    yielded but appended to `result.end`, for the caller to send when it has done what must come first (the
    gateway meters the call: a client that saw its stream end was metered).
    """
    pool = pool or default_async_pool()
    url = config.endpoint.rstrip("/") + "/" + path
    payload = dict(body)
    payload["stream"] = True
    options = dict(payload.get("stream_options") or {})
    options["include_usage"] = True
    payload["stream_options"] = options
    content = orjson.dumps(payload)

    async def attempt(http: aiohttp.ClientSession, timeout_s: float) -> aiohttp.ClientResponse:
        headers = _headers(config, "text/event-stream")
        headers["content-type"] = "application/json"
        # No total timeout: a stream may last longer than one deadline (the silence between events is bounded
        # below); the wait for the answer's head is bounded by _with_retries.
        options = _request_options(config, None)
        response = await http.post(url, headers=headers, data=content, **options)
        if response.status >= 400:
            try:
                raise await _attempt_failure(response)
            finally:
                response.release()
        return response

    response, release = await _with_retries(client, config, pool, attempt, result.stats, hold_slot=True)
    loop = asyncio.get_running_loop()
    splitter = EventSplitter(result, forward_usage=forward_usage, hold_end=hold_end)
    try:
        # One timeout for the whole stream, pushed back after every piece (asyncio.wait_for would start a task
        # per piece: measurable at thousands of chunks a second).
        async with asyncio.timeout(config.deadline_s) as silence:
            async for piece in response.content.iter_any():
                silence.reschedule(loop.time() + config.deadline_s)
                events = splitter.feed(piece)
                if events is not None:
                    yield events
        events = splitter.close()
        if events is not None:
            yield events
    except TimeoutError:
        result.error, result.error_code = f"no event within {config.deadline_s:g}s", "DEADLINE_EXCEEDED"
    except aiohttp.ClientError as exc:
        result.error, result.error_code = f"stream broken: {type(exc).__name__}: {exc}", "UNAVAILABLE"
    finally:
        release()
        if response.content.at_eof():
            response.release()  # the connection goes back to the pool
        else:
            response.close()  # the client went away mid-stream: the rest of this answer is not read


class EventSplitter:
    """Server-sent events out of network pieces: `feed` a piece, get the events it completed (None: none yet).

    An event ends at a blank line ("\n\n"), which may fall anywhere in a piece or across two. Each complete
    event goes through `_event` (usage read into the result, the unasked usage chunk dropped); with `hold_end`
    the stream's end goes to `result.end` instead (see `astream_pieces`).
    """

    __slots__ = ("_buffer", "_end", "_forward_usage", "_result")

    def __init__(self, result: StreamResult, *, forward_usage: bool, hold_end: bool = False) -> None:
        self._result, self._forward_usage = result, forward_usage
        self._end = result.end if hold_end else None
        self._buffer = b""

    def feed(self, piece: bytes) -> list[bytes] | None:
        parts = (self._buffer + piece).split(b"\n\n") if self._buffer else piece.split(b"\n\n")
        self._buffer = parts.pop()  # the unfinished event after the last blank line (usually b"")
        return self._events(parts) if parts else None

    def close(self) -> list[bytes] | None:
        """The unterminated last event of a stream that ended without its blank line."""
        rest, self._buffer = self._buffer, b""
        return self._events([rest]) if rest.strip() else None

    def _events(self, raw: list[bytes]) -> list[bytes]:
        result, forward_usage, end = self._result, self._forward_usage, self._end
        out = []
        for one in raw:
            event = _event(one, result, forward_usage)
            if event is None:
                continue
            if end is not None and (end or result.usage_reported or event.startswith(b"data: [DONE]")):
                end.append(event)
            else:
                out.append(event)
        return out


def _event(event: bytes, result: StreamResult, forward_usage: bool) -> bytes | None:
    """One SSE event passed on (with its blank-line end), or None when it is the usage chunk nobody asked for.

    An event is parsed only when it can tell something: the first one (the model's name), and those that
    mention usage or an error; the others pass as bytes.
    """
    event = event.strip(b"\r\n")
    if not event:
        return None
    if b"data:" not in event or b"[DONE]" in event:
        return event + b"\n\n"
    result.chunks += 1
    if result.model_name and b'"usage"' not in event and b'"error"' not in event:
        return event + b"\n\n"
    data = b""
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            data += line[5:].strip()
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, dict):
        if obj.get("model"):
            result.model_name = str(obj["model"])
        if isinstance(obj.get("error"), dict):
            result.error = str(obj["error"].get("message") or "error")[:500]
            result.error_code = "UPSTREAM_ERROR"
        usage = obj.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
            result.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            result.completion_tokens = int(usage.get("completion_tokens") or 0)
            result.usage_reported = True
            if not forward_usage and not obj.get("choices"):
                return None
    return event + b"\n\n"
