"""OpenAI-compatible model endpoints over HTTP(S): pinned connections, one attempt per request, response decoding.

httpx, not the `openai` package, for two reasons. Connections must go to the address the SSRF guard
approved while TLS (SNI, certificate) and the Host header keep the host name: httpcore lets us give the
connection pool its own network backend (`PinnedBackend`), so the only DNS lookup is the resolver's and
every dial is to an approved IP literal; the `openai` client hides its transport and does its own retries,
which would hide attempts from our retry policy, breaker and usage rows. And the requests are plain JSON
(chat completions, completions, embeddings), so a client library adds nothing but a layer.

One `HttpPool` per process keeps one `httpx.Client` per model config (rebuilt after fork, and when the
base URL or TLS settings change). `request()` makes exactly one attempt and classifies a failure as an
`AttemptFailed` with a gRPC-style code name, so `ModelClient` applies one retry/breaker/usage policy to
both protocols.
"""

from __future__ import annotations

import email.utils
import ipaddress
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from .config import ModelEndpoint, TlsConfig
from .errors import EndpointRefused, EndpointUnresolved

__all__ = [
    "AttemptFailed",
    "HttpPool",
    "PinnedBackend",
    "base_url_parts",
    "decode_openai_response",
    "default_http_pool",
    "openai_request",
    "parse_retry_after",
]

Resolver = Callable[[str, int], Sequence[str]]
# The most a response body may hold; larger answers are refused rather than buffered.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
# Response keys of an OpenAI error object worth showing an operator (never the request, which may hold a key).
_ERROR_TEXT_LIMIT = 500


class AttemptFailed(Exception):
    """One HTTP attempt failed; `kind` is "retry", "transient" or "permanent" (docs/models.md)."""

    def __init__(
        self,
        code: str,
        details: str,
        kind: str,
        *,
        retry_after: float | None = None,
        too_large: bool = False,
        http_status: int | None = None,
    ) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.kind = kind
        self.retry_after = retry_after
        self.too_large = too_large
        self.http_status = http_status


def base_url_parts(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) base URL; anything else raises EndpointRefused."""
    text = (url or "").strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EndpointRefused(f"endpoint {url!r} is not an http(s) URL")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise EndpointRefused(f"endpoint {url!r} must not carry credentials, a query or a fragment")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise EndpointRefused(f"endpoint {url!r} has an invalid port") from None
    return parts.scheme, parts.hostname, port


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (seconds or an HTTP date); None when absent or junk."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


# ---- connections pinned to approved addresses ---------------------------------------------------------
class PinnedBackend(httpcore.NetworkBackend):
    """httpcore network backend that dials only the addresses the resolver approved for (host, port).

    httpcore passes the URL's host here and keeps it for TLS (SNI and the certificate check) and the
    Host header; the socket goes to an IP literal the resolver returned. Approved answers are kept for
    `recheck_s` seconds (a new connection after that asks the resolver again) and dropped by `forget`.
    """

    def __init__(
        self, resolver: Callable[[], Resolver], *, recheck_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._resolver = resolver
        self._inner = httpcore.SyncBackend()
        self._lock = threading.Lock()
        self._approved: dict[tuple[str, int], tuple[list[str], float]] = {}
        self.recheck_s = recheck_s
        self._clock = clock
        # Addresses dialled, newest last (tests read it to prove where a connection went).
        self.dialled: list[str] = []

    def approved(self, host: str, port: int) -> list[str]:
        """Approved addresses of (host, port), resolved and checked again when due."""
        now = self._clock()
        with self._lock:
            hit = self._approved.get((host, port))
            if hit is not None and now - hit[1] < self.recheck_s:
                return hit[0]
        try:
            addresses = [str(ipaddress.ip_address(a)) for a in self._resolver()(host, port)]
        except EndpointUnresolved:
            if hit is not None:
                # DNS trouble: keep the address approved before (never a new one) until the next check.
                with self._lock:
                    self._approved[(host, port)] = (hit[0], now)
                return hit[0]
            raise
        except EndpointRefused:
            self.forget(host, port)
            raise
        if not addresses:
            raise EndpointUnresolved(f"{host} has no address")
        addresses.sort(key=lambda a: ":" in a)
        with self._lock:
            self._approved[(host, port)] = (addresses, now)
        return addresses

    def forget(self, host: str, port: int) -> None:
        """Resolve and check again before the next connection (a connection just failed)."""
        with self._lock:
            self._approved.pop((host, port), None)

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        """Connect to the first approved address that answers; the name never reaches a resolver of its own."""
        last: Exception | None = None
        for address in self.approved(host, int(port)):
            try:
                stream = self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                last = exc
                continue
            with self._lock:
                self.dialled.append(address)
                del self.dialled[:-100]
            return stream
        raise last or httpcore.ConnectError(f"no approved address of {host} answered")

    def connect_unix_socket(self, path, timeout=None, socket_options=None):  # pragma: no cover - never used
        raise httpcore.ConnectError("unix sockets are not model endpoints")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _PinnedTransport(httpx.HTTPTransport):
    """httpx's own transport (request/response mapping, errors) over a pool that uses PinnedBackend."""

    def __init__(self, backend: PinnedBackend, ssl_context: ssl.SSLContext, max_connections: int) -> None:
        super().__init__(verify=ssl_context, trust_env=False)
        # Replaced rather than configured: HTTPTransport has no network_backend argument. httpx is pinned
        # (requirements.txt) and modelclient/tests/test_openai_http.py proves the dial goes where approved.
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=60.0,
            network_backend=backend,
            # h11 writes headers and body separately: without TCP_NODELAY, Nagle's algorithm holds the body
            # until the server's delayed ACK (~40 ms per request).
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )


def _ssl_context(tls: TlsConfig | None) -> ssl.SSLContext:
    """The system trust store, or the configured CA; a client certificate for mutual TLS."""
    if tls is not None and tls.root_certs:
        context = ssl.create_default_context(cadata=tls.root_certs.decode())
    else:
        context = ssl.create_default_context()
    if tls is not None and tls.client_cert and tls.client_key:
        import tempfile

        # ssl loads a client certificate only from files: write them to a private temp dir, load, remove.
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
            for path, data in ((cert, tls.client_cert), (key, tls.client_key)):
                with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as fh:
                    fh.write(data)
            context.load_cert_chain(cert, key)
    return context


@dataclass
class _Slot:
    spec: tuple
    client: httpx.Client
    backend: PinnedBackend
    used_at: float


class HttpPool:
    """One pinned httpx.Client per model config (or per base URL + TLS for ad-hoc endpoints), per process."""

    def __init__(self, *, resolver: Resolver | None = None, recheck_s: float = 30.0, idle_close_s: float = 600.0):
        self._lock = threading.Lock()
        self._slots: dict[object, _Slot] = {}
        self._pid = os.getpid()
        self._resolver = resolver
        self.recheck_s = recheck_s
        self.idle_close_s = idle_close_s

    def _current_resolver(self) -> Resolver:
        from .channels import _current_default_resolver

        return self._resolver or _current_default_resolver()

    @staticmethod
    def _owner(config: ModelEndpoint) -> object:
        if config.config_id:
            return ("config", str(config.config_id))
        return ("endpoint", config.endpoint, config.tls)

    def get(self, config: ModelEndpoint) -> tuple[httpx.Client, PinnedBackend]:
        """The config's client; the endpoint's host is resolved and checked (raises EndpointRefused/Unresolved)."""
        _scheme, host, port = base_url_parts(config.endpoint)
        owner = self._owner(config)
        spec = (config.endpoint, config.tls, config.max_in_flight)
        now = time.monotonic()
        closing: list[httpx.Client] = []
        with self._lock:
            if os.getpid() != self._pid:
                # A forked child (Celery prefork) must not share the parent's sockets.
                self._slots, self._pid = {}, os.getpid()
            slot = self._slots.get(owner)
            if slot is None or slot.spec != spec:
                if slot is not None:
                    closing.append(slot.client)
                backend = PinnedBackend(self._current_resolver, recheck_s=self.recheck_s)
                transport = _PinnedTransport(backend, _ssl_context(config.tls), max(1, config.max_in_flight))
                client = httpx.Client(transport=transport, trust_env=False, follow_redirects=False)
                slot = self._slots[owner] = _Slot(spec, client, backend, now)
            slot.used_at = now
            for other, idle in list(self._slots.items()):
                if now - idle.used_at >= self.idle_close_s:
                    closing.append(self._slots.pop(other).client)
        for old in closing:
            old.close()
        # Before any request: a refused address is the config's fault and must fail before the breaker is asked.
        slot.backend.approved(host, port)
        return slot.client, slot.backend

    def invalidate(self, config: ModelEndpoint) -> None:
        """Resolve and check again before the next connection of this config."""
        with self._lock:
            slot = self._slots.get(self._owner(config))
        if slot is not None:
            _scheme, host, port = base_url_parts(config.endpoint)
            slot.backend.forget(host, port)

    def discard(self, config_id: object) -> bool:
        """Close a model config's client now (changed or deleted)."""
        with self._lock:
            slot = self._slots.pop(("config", str(config_id)), None)
        if slot is None:
            return False
        slot.client.close()
        return True

    def close(self) -> None:
        """Close every client (tests, shutdown)."""
        with self._lock:
            slots, self._slots = list(self._slots.values()), {}
        for slot in slots:
            slot.client.close()


_default_http_pool = HttpPool()


def default_http_pool() -> HttpPool:
    """The process-wide pool."""
    return _default_http_pool


# ---- one attempt ----------------------------------------------------------------------------------------
def _classify_status(status: int) -> tuple[str, str]:
    """(code name, kind) of an HTTP error status: 429 and 5xx are retried, 4xx never."""
    if status == 429:
        return "RESOURCE_EXHAUSTED", "retry"
    if status == 501:
        return "UNIMPLEMENTED", "permanent"
    if status == 500:
        return "INTERNAL", "retry"
    if status >= 500:
        return "UNAVAILABLE", "retry"
    if status in (400, 422):
        return "INVALID_ARGUMENT", "permanent"
    if status == 401:
        return "UNAUTHENTICATED", "permanent"
    if status == 403:
        return "PERMISSION_DENIED", "permanent"
    if status == 404:
        return "NOT_FOUND", "permanent"
    if status == 408:
        return "DEADLINE_EXCEEDED", "transient"
    if status == 409:
        return "ABORTED", "transient"
    return "FAILED_PRECONDITION", "permanent"


def _error_text(status: int, body: bytes) -> str:
    """The server's own error message (OpenAI `{"error": {"message": ...}}`) or the start of the body."""
    message = ""
    try:
        data = json.loads(body)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            message = str(err.get("message") or "")
        elif isinstance(err, str):
            message = err
        elif isinstance(data, dict) and "detail" in data:
            message = str(data["detail"])
    except ValueError:
        message = body[:_ERROR_TEXT_LIMIT].decode("utf-8", "replace")
    return f"HTTP {status}: {message[:_ERROR_TEXT_LIMIT]}".rstrip(": ")


def openai_request(
    client: httpx.Client,
    config: ModelEndpoint,
    method: str,
    path: str,
    body: Mapping[str, Any] | None,
    timeout_s: float,
) -> dict[str, Any]:
    """One HTTP attempt within `timeout_s` in total; the JSON answer, or AttemptFailed.

    Args:
        client: the config's pinned client (HttpPool.get).
        config: endpoint (base URL), API key and TLS server name.
        method: "GET" or "POST".
        path: below the base URL ("chat/completions").
        body: JSON request body (POST).
        timeout_s: the attempt's deadline, for the whole exchange (connect to last byte).
    """
    url = config.endpoint.rstrip("/") + "/" + path
    headers = {"accept": "application/json"}
    if config.api_key:
        headers["authorization"] = f"Bearer {config.api_key}"
    extensions: dict[str, Any] = {}
    if config.tls is not None and config.tls.server_name:
        extensions["sni_hostname"] = config.tls.server_name
    started = time.monotonic()
    try:
        request = client.build_request(
            method,
            url,
            headers=headers,
            json=dict(body) if body is not None else None,
            timeout=httpx.Timeout(timeout_s),
            extensions=extensions,
        )
        response = client.send(request, stream=True)
        try:
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise AttemptFailed("RESOURCE_EXHAUSTED", "response larger than 64 MiB", "permanent")
                if time.monotonic() - started > timeout_s:
                    # httpx's timeouts are per read; the deadline covers the whole answer.
                    raise AttemptFailed("DEADLINE_EXCEEDED", f"no complete answer within {timeout_s:g}s", "transient")
                chunks.append(chunk)
            raw = b"".join(chunks)
        finally:
            response.close()
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise AttemptFailed("UNAVAILABLE", f"cannot connect: {exc}", "retry") from None
    except httpx.RemoteProtocolError as exc:
        # Typically a keep-alive connection the server closed before answering: the request did not run.
        raise AttemptFailed("UNAVAILABLE", f"connection closed: {exc}", "retry") from None
    except httpx.TimeoutException:
        raise AttemptFailed("DEADLINE_EXCEEDED", f"no answer within {timeout_s:g}s", "transient") from None
    except httpx.HTTPError as exc:
        raise AttemptFailed("UNKNOWN", f"{type(exc).__name__}: {exc}", "transient") from None
    except EndpointUnresolved as exc:
        raise AttemptFailed("UNAVAILABLE", exc.message, "retry") from None
    status = response.status_code
    if status >= 400:
        code, kind = _classify_status(status)
        too_large = status == 413
        retry_after = parse_retry_after(response.headers) if kind == "retry" else None
        raise AttemptFailed(
            "MESSAGE_TOO_LARGE" if too_large else code,
            _error_text(status, raw),
            kind,
            retry_after=retry_after,
            too_large=too_large,
            http_status=status,
        )
    try:
        data = json.loads(raw)
    except ValueError:
        raise AttemptFailed("BAD_RESPONSE", f"HTTP {status}: the answer is not JSON", "permanent") from None
    if not isinstance(data, dict):
        raise AttemptFailed("BAD_RESPONSE", f"HTTP {status}: the answer is not a JSON object", "permanent")
    return data


# ---- requests and answers ---------------------------------------------------------------------------------
PATHS = {"chat": "chat/completions", "completions": "completions", "embeddings": "embeddings"}
# Request keys the portal sets itself; a parameter of the same name cannot override them.
_RESERVED = frozenset({"model", "messages", "prompt", "input", "stream", "n"})


class ResponseShapeError(ValueError):
    """An answer that is JSON but not the shape the API promises."""


def build_openai_body(config: ModelEndpoint, texts: Sequence[str], parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON body of one request: one conversation (chat) or a list of prompts/inputs."""
    params = {k: v for k, v in parameters.items() if k not in _RESERVED and k != "system_prompt"}
    body: dict[str, Any] = {"model": config.model_name, **params}
    if config.openai_api == "chat":
        messages = []
        system = parameters.get("system_prompt")
        if system:
            messages.append({"role": "system", "content": str(system)})
        messages.append({"role": "user", "content": texts[0]})
        body["messages"] = messages
    elif config.openai_api == "completions":
        body["prompt"] = list(texts)
    else:
        body["input"] = list(texts)
    return body


def json_mode(parameters: Mapping[str, Any]) -> bool:
    """`response_format` asks for a JSON object: each key of the answer becomes an output."""
    fmt = parameters.get("response_format")
    return isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")


def _text_outputs(text: str, finish_reason: Any, as_json: bool) -> dict[str, Any]:
    if as_json:
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if isinstance(value, dict):
            return value
        # Not an object: the text stays, so an `outputs` mapping quarantines the record naming what came back.
        return {"text": text, "finish_reason": finish_reason, "json_error": "the answer is not a JSON object"}
    return {"text": text, "finish_reason": finish_reason}


@dataclass
class DecodedOpenAI:
    """Per-record outputs and usage of one OpenAI-compatible answer."""

    records: list[dict[str, Any]]
    prompt_tokens: int
    completion_tokens: int
    usage_reported: bool
    model_name: str


def decode_openai_response(
    config: ModelEndpoint, data: Mapping[str, Any], n: int, parameters: Mapping[str, Any]
) -> DecodedOpenAI:
    """Outputs per record (by `index`) and the token counts of `usage`; ResponseShapeError when malformed."""
    as_json = json_mode(parameters)
    records: list[dict[str, Any] | None] = [None] * n
    if config.openai_api == "embeddings":
        items = data.get("data")
        if not isinstance(items, list):
            raise ResponseShapeError("the answer has no `data` list")
        for pos, item in enumerate(items):
            index = item.get("index", pos) if isinstance(item, dict) else None
            if not isinstance(index, int) or not 0 <= index < n or not isinstance(item.get("embedding"), list):
                raise ResponseShapeError(f"data[{pos}] has no valid index/embedding")
            records[index] = {"embedding": item["embedding"]}
    else:
        choices = data.get("choices")
        if not isinstance(choices, list):
            raise ResponseShapeError("the answer has no `choices` list")
        for pos, choice in enumerate(choices):
            if not isinstance(choice, dict):
                raise ResponseShapeError(f"choices[{pos}] is not an object")
            index = choice.get("index", pos)
            if not isinstance(index, int) or not 0 <= index < n:
                raise ResponseShapeError(f"choices[{pos}] has index {index!r} outside 0..{n - 1}")
            if config.openai_api == "chat":
                message = choice.get("message")
                text = message.get("content") if isinstance(message, dict) else None
            else:
                text = choice.get("text")
            if not isinstance(text, str):
                raise ResponseShapeError(f"choices[{pos}] has no text")
            records[index] = _text_outputs(text, choice.get("finish_reason"), as_json)
    missing = [i for i, r in enumerate(records) if r is None]
    if missing:
        raise ResponseShapeError(f"no answer for record(s) {missing[:10]}")
    usage = data.get("usage")
    reported = isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int)
    prompt = int(usage.get("prompt_tokens") or 0) if reported else 0
    completion = int(usage.get("completion_tokens") or 0) if reported else 0
    return DecodedOpenAI(records, prompt, completion, reported, str(data.get("model") or config.model_name))  # type: ignore[arg-type]
