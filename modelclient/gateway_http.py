"""Async pass-through to OpenAI-compatible endpoints for the portal's gateway (docs/models.md, "The gateway").

The gateway forwards a client's own request body (messages with their roles, tools, sampling knobs) to the
model config's server, so it cannot go through `ModelClient.infer_texts`, which builds the body from records.
It keeps everything else of that client: the same `ModelEndpoint` (deadline, retry policy, in-flight bound,
breaker policy), the same shared breaker (`ModelClient.breaker`), the same per-process in-flight semaphore,
the same HTTP status classification and Retry-After rule (`openai_http`), and the same SSRF guard — every
connection dials an address the resolver approved, while TLS and the Host header keep the name.

It is async (httpx.AsyncClient on httpcore's AnyIO backend) so that a streamed answer holds no thread while
it waits for the next token: under an ASGI server one event loop serves every open stream.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpcore
import httpx
import orjson

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

__all__ = ["AsyncHttpPool", "StreamResult", "acall_json", "astream", "default_async_pool"]


class AsyncPinnedBackend(httpcore.AsyncNetworkBackend):
    """httpcore async backend that dials only approved addresses (the sync PinnedBackend's approval cache)."""

    def __init__(self, pinned: PinnedBackend) -> None:
        self.pinned = pinned
        self._inner = httpcore.AnyIOBackend()

    async def approved(self, host: str, port: int) -> list[str]:
        """Approved addresses; a due lookup (DNS + guard) runs in a thread so the event loop never blocks on it."""
        pinned = self.pinned
        hit = pinned._approved.get((host, port))
        if hit is not None and pinned._clock() - hit[1] < pinned.recheck_s:
            return hit[0]
        return await asyncio.to_thread(pinned.approved, host, port)

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        last: Exception | None = None
        for address in await self.approved(host, int(port)):
            try:
                stream = await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                last = exc
                continue
            self.pinned.dialled.append(address)
            del self.pinned.dialled[:-100]
            return stream
        raise last or httpcore.ConnectError(f"no approved address of {host} answered")

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):  # pragma: no cover
        raise httpcore.ConnectError("unix sockets are not model endpoints")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _AsyncPinnedTransport(httpx.AsyncHTTPTransport):
    def __init__(self, backend: AsyncPinnedBackend, ssl_context, max_connections: int) -> None:
        super().__init__(verify=ssl_context, trust_env=False)
        # As in openai_http._PinnedTransport: the pool is replaced to give it our network backend.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=60.0,
            network_backend=backend,
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )


@dataclass
class _Slot:
    spec: tuple
    client: httpx.AsyncClient
    backend: AsyncPinnedBackend


class AsyncHttpPool:
    """One pinned httpx.AsyncClient per model config per event loop (rebuilt when the endpoint changes)."""

    def __init__(self, *, resolver=None, recheck_s: float = 30.0) -> None:
        self._slots: dict[tuple, _Slot] = {}
        self._pid = os.getpid()
        self._resolver = resolver
        self.recheck_s = recheck_s

    def _current_resolver(self):
        from .channels import _current_default_resolver

        return self._resolver or _current_default_resolver()

    async def get(self, config: ModelEndpoint) -> tuple[httpx.AsyncClient, AsyncPinnedBackend]:
        """The config's client on this loop; the host is resolved and checked first (EndpointRefused/Unresolved)."""
        _scheme, host, port = base_url_parts(config.endpoint)
        loop = asyncio.get_running_loop()
        if os.getpid() != self._pid:
            self._slots, self._pid = {}, os.getpid()
        owner = (id(loop), config.config_id or (config.endpoint, config.tls))
        spec = (config.endpoint, config.tls, config.max_in_flight)
        slot = self._slots.get(owner)
        if slot is None or slot.spec != spec:
            if slot is not None:
                await slot.client.aclose()
            pinned = PinnedBackend(self._current_resolver, recheck_s=self.recheck_s)
            backend = AsyncPinnedBackend(pinned)
            # Connections per config: the in-flight bound (a stream holds its slot and its connection).
            transport = _AsyncPinnedTransport(backend, _ssl_context(config.tls), max(1, config.max_in_flight))
            client = httpx.AsyncClient(transport=transport, trust_env=False, follow_redirects=False)
            slot = self._slots[owner] = _Slot(spec, client, backend)
        await slot.backend.approved(host, port)
        return slot.client, slot.backend

    def invalidate(self, config: ModelEndpoint) -> None:
        """Resolve and check again before the next connection (the last one failed)."""
        _scheme, host, port = base_url_parts(config.endpoint)
        for owner, slot in self._slots.items():
            if owner[1] == (config.config_id or (config.endpoint, config.tls)):
                slot.backend.pinned.forget(host, port)

    async def aclose(self) -> None:
        slots, self._slots = list(self._slots.values()), {}
        for slot in slots:
            await slot.client.aclose()


_default_async_pool = AsyncHttpPool()


def default_async_pool() -> AsyncHttpPool:
    """The process-wide async pool."""
    return _default_async_pool


def _headers(config: ModelEndpoint, accept: str) -> dict[str, str]:
    headers = {"accept": accept}
    if config.api_key:
        headers["authorization"] = f"Bearer {config.api_key}"
    return headers


def _extensions(config: ModelEndpoint) -> dict[str, Any]:
    if config.tls is not None and config.tls.server_name:
        return {"sni_hostname": config.tls.server_name}
    return {}


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


async def _attempt_failure(response: httpx.Response) -> AttemptFailed:
    """An HTTP error status as AttemptFailed (the same classification as the sync client)."""
    raw = b""
    async for chunk in response.aiter_bytes():
        raw += chunk
        if len(raw) > 65536:
            break
    status = response.status_code
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


async def _with_retries(
    client: ModelClient,
    config: ModelEndpoint,
    pool: AsyncHttpPool,
    attempt_fn: Callable[[httpx.AsyncClient, float], Awaitable[Any]],
    stats: CallStats,
    *,
    hold_slot: bool = False,
    rng: random.Random | None = None,
) -> Any:
    """ModelClient._call's policy, async: breaker, in-flight bound, bounded retries with backoff/Retry-After.

    With `hold_slot` the in-flight slot stays taken on success (a stream releases it when it ends):
    the result is (value, release).
    """
    rng = rng or random.Random()
    try:
        http: httpx.AsyncClient | None = (await pool.get(config))[0]
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
                value = await asyncio.wait_for(attempt_fn(http, config.deadline_s), config.deadline_s)
            except AttemptFailed as e:
                code, details, kind, retry_after, too_large = e.code, e.details, e.kind, e.retry_after, e.too_large
                stats.record(code, time.perf_counter() - started)
            except (TimeoutError, httpx.TimeoutException):
                code, details, kind = "DEADLINE_EXCEEDED", f"no answer within {config.deadline_s:g}s", "transient"
                retry_after, too_large = None, False
                stats.record(code, time.perf_counter() - started)
            except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
                code, details, kind, retry_after, too_large = (
                    "UNAVAILABLE",
                    f"cannot connect: {exc}",
                    "retry",
                    None,
                    False,
                )
                stats.record(code, time.perf_counter() - started)
            except httpx.HTTPError as exc:
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

    async def attempt(http: httpx.AsyncClient, timeout_s: float) -> dict[str, Any]:
        headers = _headers(config, "application/json")
        if content is not None:
            headers["content-type"] = "application/json"
        request = http.build_request(
            method,
            url,
            headers=headers,
            content=content,
            timeout=httpx.Timeout(timeout_s),
            extensions=_extensions(config),
        )
        response = await http.send(request, stream=True)
        try:
            if response.status_code >= 400:
                raise await _attempt_failure(response)
            raw = bytearray()
            async for chunk in response.aiter_bytes():
                raw += chunk
                if len(raw) > MAX_RESPONSE_BYTES:
                    raise AttemptFailed("RESOURCE_EXHAUSTED", "response larger than 64 MiB", "permanent")
        finally:
            await response.aclose()
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
    """What a finished stream reported: usage (when the server sent it) and how it ended."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_reported: bool = False
    model_name: str = ""
    error: str = ""
    error_code: str = ""
    chunks: int = 0
    stats: CallStats = field(default_factory=CallStats)


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
    errors after it end the stream and are left in `result.error`.
    """
    pool = pool or default_async_pool()
    url = config.endpoint.rstrip("/") + "/" + path
    payload = dict(body)
    payload["stream"] = True
    options = dict(payload.get("stream_options") or {})
    options["include_usage"] = True
    payload["stream_options"] = options
    content = orjson.dumps(payload)

    async def attempt(http: httpx.AsyncClient, timeout_s: float) -> httpx.Response:
        headers = _headers(config, "text/event-stream")
        headers["content-type"] = "application/json"
        request = http.build_request(
            "POST",
            url,
            headers=headers,
            content=content,
            timeout=httpx.Timeout(timeout_s),
            extensions=_extensions(config),
        )
        response = await http.send(request, stream=True)
        if response.status_code >= 400:
            try:
                raise await _attempt_failure(response)
            finally:
                await response.aclose()
        return response

    response, release = await _with_retries(client, config, pool, attempt, result.stats, hold_slot=True)
    loop = asyncio.get_running_loop()
    try:
        buffer = b""
        # One timeout for the whole stream, pushed back after every piece (asyncio.wait_for would start a task
        # per piece: measurable at thousands of chunks a second).
        async with asyncio.timeout(config.deadline_s) as silence:
            async for piece in response.aiter_raw():
                silence.reschedule(loop.time() + config.deadline_s)
                buffer += piece
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    out = _event(event, result, forward_usage)
                    if out is not None:
                        yield out
        if buffer.strip():
            out = _event(buffer, result, forward_usage)
            if out is not None:
                yield out
    except TimeoutError:
        result.error, result.error_code = f"no event within {config.deadline_s:g}s", "DEADLINE_EXCEEDED"
    except httpx.HTTPError as exc:
        result.error, result.error_code = f"stream broken: {type(exc).__name__}: {exc}", "UNAVAILABLE"
    finally:
        release()
        await response.aclose()


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
