"""The gateway's own ASGI handler: /v1/ requests skip the console's middleware stack.

The portal's middleware (sessions, CSRF, messages, locale, WhiteNoise, the console's own) is synchronous, so
under ASGI every request through it is carried on a thread while the view starts. The gateway needs none of it
(no sessions, cookies, pages or static files: a bearer key authenticates each call), so `dataflare_portal.asgi`
sends paths under /v1/ to this handler, whose only middleware is `GatewayEdgeMiddleware` (async): the request id
and, with AUTH_MODE=none, the loopback-only rule of `PeerGuardMiddleware`. Everything else (URL resolution,
views, error handling) is Django's ASGIHandler, except the request_started/request_finished signals: their
receivers are synchronous (close_old_connections, cache closing), so Django runs each through a thread, two
thread hops per call for connections the gateway's event loop never opens. The gateway's database threads
check their own connections (gateway/runtime.py).
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from asgiref.sync import markcoroutinefunction
from django.conf import settings
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.exception import convert_exception_to_response
from django.http import JsonResponse
from django.urls import set_script_prefix
from django.utils.translation import gettext as _

from dataflare_portal.core.middleware import _SAFE_ID
from dataflare_portal.core.peerguard import client_ip, is_loopback_host
from dataflare_portal.core.requestctx import request_id_var

log = logging.getLogger(__name__)


class GatewayEdgeMiddleware:
    """Request id (X-Request-ID in and out) and the AUTH_MODE=none loopback rule, without a thread."""

    sync_capable = False
    async_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request):
        incoming = request.headers.get("X-Request-ID", "")
        rid = incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex
        request.request_id = rid
        token = request_id_var.set(rid)
        try:
            if settings.AUTH_MODE == "none" and not settings.AUTH_MODE_NONE_ALLOW_REMOTE:
                peer = client_ip(request)
                if not is_loopback_host(peer):
                    message = _("This portal runs without authentication and only answers on this machine (loopback).")
                    body = {
                        "error": {
                            "message": message,
                            "type": "permission_error",
                            "param": None,
                            "code": "remote_refused",
                        }
                    }
                    response = JsonResponse(body, status=403)
                else:
                    response = await self.get_response(request)
            else:
                response = await self.get_response(request)
        finally:
            request_id_var.reset(token)
        response["X-Request-ID"] = rid
        return response


class GatewayASGIHandler(ASGIHandler):
    """Django's ASGI handler with the gateway's one async middleware instead of settings.MIDDLEWARE."""

    def load_middleware(self, is_async=False):
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        handler = convert_exception_to_response(self._get_response_async)
        self._middleware_chain = convert_exception_to_response(GatewayEdgeMiddleware(handler))

    async def handle(self, scope, receive, send):
        """ASGIHandler.handle without the request signals (see the module docstring); the rest as Django's."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            _close_response(error_response)
            return

        async def process_request(request, send):
            response = await self.run_get_response(request)
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:
                pass
            return response

        tasks = [
            asyncio.create_task(self.listen_for_disconnect(receive)),
            asyncio.create_task(process_request(request, send)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                try:
                    task.result()
                except RequestAborted:
                    pass
                except AssertionError:
                    body_file.close()
                    raise
            else:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        try:
            response = tasks[1].result()
        except asyncio.CancelledError:
            pass
        else:
            _close_response(response)
        body_file.close()


def _close_response(response) -> None:
    """HttpResponse.close() without its request_finished signal: run the response's own closers only."""
    for closer in response._resource_closers:
        try:
            closer()
        except Exception:
            log.exception("closing a gateway response failed")
    response._resource_closers.clear()
    response.closed = True


def gateway_application(fallback):
    """An ASGI app sending HTTP requests under /v1/ to the gateway handler and everything else to `fallback`."""
    gateway = GatewayASGIHandler()

    async def application(scope, receive, send):
        if scope["type"] == "http" and scope.get("path", "").startswith("/v1/"):
            return await gateway(scope, receive, send)
        return await fallback(scope, receive, send)

    return application
