"""The gateway's own ASGI app: /v1/ requests never enter Django's request handler.

`dataflare_portal.asgi` sends HTTP paths under /v1/ here and everything else to Django. The gateway needs none of
Django's handler (no sessions, cookies, CSRF, pages, static files or middleware: a bearer key authenticates each
call, and the console's middleware is synchronous, so under ASGI every request through it rides a thread), and
py-spy showed its per-request work — building an `ASGIRequest` (META, a spooled body file), resolving the URL,
the middleware chain, the request signals, a disconnect-listening task per request, and wrapping each streamed
chunk — as a tenth of the event loop's time once the upstream hop was lean (docs/models.md, "Gateway hot path").

Here one coroutine per request reads the body, routes the five paths by string, builds a `GatewayRequest` (the few
things the views read: method, headers, body, the peer's address), sets the request id (X-Request-ID in and
out), applies the AUTH_MODE=none loopback rule of `PeerGuardMiddleware`, calls the same async views
(`gateway/views.py`, which Django's URLconf also serves under WSGI: runserver and the test client) and sends their
`HttpResponse` itself: a whole body with its Content-Length, or a stream's events as the view's generator yields
them. Only a stream listens for the client going away (and then stops relaying, so the call is recorded as
cancelled); an unexpected error is answered 500 in OpenAI's error shape and logged.
"""

from __future__ import annotations

import asyncio
import logging
import random

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpResponse, JsonResponse
from django.utils.translation import gettext as _

from dataflare_portal.core.middleware import _SAFE_ID
from dataflare_portal.core.peerguard import client_ip, is_loopback_host
from dataflare_portal.core.requestctx import request_id_var

from . import views

log = logging.getLogger(__name__)


class GatewayRequest:
    """What the gateway's views read of a request under the lean ASGI app (Django's HttpRequest under WSGI).

    `headers.get(name)` is case-insensitive (names are stored lower-case); `META` holds the peer's address and the
    forwarded-for header for `client_ip`; `body` raises RequestDataTooBig past DATA_UPLOAD_MAX_MEMORY_SIZE.
    """

    __slots__ = ("META", "_body", "headers", "method", "path", "request_id")

    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes | None, peer: str) -> None:
        self.method, self.path, self.headers, self._body = method, path, _Headers(headers), body
        self.META = {"REMOTE_ADDR": peer, "HTTP_X_FORWARDED_FOR": headers.get("x-forwarded-for", "")}
        self.request_id = ""

    @property
    def body(self) -> bytes:
        if self._body is None:
            raise RequestDataTooBig("Request body exceeded settings.DATA_UPLOAD_MAX_MEMORY_SIZE.")
        return self._body


class _Headers(dict):
    def get(self, name: str, default=None):
        return super().get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name) -> bool:
        return super().__contains__(str(name).lower())


def _error(status: int, message: str, type_: str, code: str) -> JsonResponse:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return JsonResponse(body, status=status)


def _route(path: str):
    """(view, kwargs) of a path under /v1/ (the same routes as gateway/urls.py)."""
    rest = path[4:]
    if rest == "chat/completions":
        return views.chat_completions, {}
    if rest == "completions":
        return views.completions, {}
    if rest == "embeddings":
        return views.embeddings, {}
    if rest == "models":
        return views.models, {}
    if rest.startswith("models/") and len(rest) > 7:
        return views.models, {"model": rest[7:]}
    return views.not_found, {"rest": rest}


async def _read_body(receive) -> tuple[bytes | None, bool]:
    """(body, or None past the size limit; whether the client went away before sending it all)."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None, True
        chunk = message.get("body", b"")
        if chunk and parts is not None:
            size += len(chunk)
            if limit is not None and size > limit:
                parts = None  # keep reading (the protocol needs the whole request) but drop the bytes
            else:
                parts.append(chunk)
        if not message.get("more_body", False):
            break
    if parts is None:
        return None, False
    return (parts[0] if len(parts) == 1 else b"".join(parts)), False


def _head(response: HttpResponse, length: int | None) -> dict:
    headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in response.items()]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return {"type": "http.response.start", "status": response.status_code, "headers": headers}


async def _send_stream(response, send, receive, head_only: bool) -> None:
    """A stream's events as the view yields them, until the end or the client going away (then the view's
    generator is closed, which records the call as cancelled)."""
    events = getattr(response, "gateway_events", None)
    if events is None:  # a streaming response not made by the gateway's views
        events = response.streaming_content
    await send(_head(response, None))
    if head_only:
        await send({"type": "http.response.body", "body": b""})
        return
    if isinstance(events, list):
        for event in events:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return

    async def pump() -> None:
        try:
            async for event in events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await events.aclose()

    async def gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    relay, watch = asyncio.ensure_future(pump()), asyncio.ensure_future(gone())
    try:
        await asyncio.wait((relay, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (relay, watch):
            if not task.done():
                task.cancel()
        await asyncio.gather(relay, watch, return_exceptions=True)
    if relay.done() and not relay.cancelled() and relay.exception() is not None:
        log.error("gateway stream failed", exc_info=relay.exception())


async def gateway_app(scope, receive, send) -> None:
    """The /v1/ HTTP app (see the module docstring)."""
    body, gone = await _read_body(receive)
    if gone:
        return
    raw_headers = {}
    for name, value in scope["headers"]:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        raw_headers[key] = f"{raw_headers[key]},{text}" if key in raw_headers else text
    client = scope.get("client")
    request = GatewayRequest(scope["method"], scope["path"], raw_headers, body, client[0] if client else "")
    incoming = raw_headers.get("x-request-id", "")
    # 128 random bits as 32 hex digits, like uuid4().hex, from the process's generator instead of os.urandom (a
    # system call per request): a request id needs to be unique, not unguessable.
    rid = incoming if _SAFE_ID.match(incoming) else f"{random.getrandbits(128):032x}"
    request.request_id = rid
    token = request_id_var.set(rid)
    try:
        if (
            settings.AUTH_MODE == "none"
            and not settings.AUTH_MODE_NONE_ALLOW_REMOTE
            and not is_loopback_host(client_ip(request))
        ):
            message = _("This portal runs without authentication and only answers on this machine (loopback).")
            response = _error(403, message, "permission_error", "remote_refused")
        else:
            view, kwargs = _route(scope["path"])
            try:
                response = await view(request, **kwargs)
            except Exception:
                log.exception("gateway request %s %s failed", scope["method"], scope["path"])
                response = _error(500, _("The gateway failed to answer this request."), "api_error", "internal_error")
        response["X-Request-ID"] = rid
        head_only = scope["method"] == "HEAD"
        if response.streaming:
            await _send_stream(response, send, receive, head_only)
        else:
            content = response.content
            await send(_head(response, len(content)))
            await send({"type": "http.response.body", "body": b"" if head_only else content})
    finally:
        request_id_var.reset(token)


def gateway_application(fallback):
    """An ASGI app sending HTTP requests under /v1/ to `gateway_app` and everything else to `fallback`."""

    async def application(scope, receive, send):
        if scope["type"] == "http" and scope.get("path", "").startswith("/v1/"):
            return await gateway_app(scope, receive, send)
        return await fallback(scope, receive, send)

    return application
