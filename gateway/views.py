"""The portal's OpenAI-compatible gateway: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models.

Async views (docs/models.md, "The gateway"): under an ASGI server (uvicorn) a streamed answer is relayed from
the event loop, so an idle stream holds no thread. Behind each model name is a model config of either
protocol: OpenAI-compatible configs get the client's own body (model name replaced) through the async
pass-through in `modelclient.gateway_http`; KServe V2 configs get the text records through `ModelClient`
(in a thread) and their outputs are shaped as OpenAI answers. Every call is metered into tokens_usage (project,
key, model), logged per key (the body only when the key opted in) and refused with OpenAI's error shape.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_exempt

from dataflare_portal.core.requestctx import request_id_var
from modelclient import BreakerOpen, CallStats, EndpointRefused, ModelError, PermanentModelError
from modelclient.config import OPENAI
from modelclient.gateway_http import StreamResult, acall_json, astream_pieces, default_async_pool
from pipelines.model_configs import model_client, model_config_endpoint
from pipelines.models import ModelConfig

from . import runtime, services
from .choices import GatewayEndpoint
from .runtime import CachedKey, CachedModel, CachedUsage, caches

log = logging.getLogger(__name__)

PATHS = {
    GatewayEndpoint.CHAT: "chat/completions",
    GatewayEndpoint.COMPLETIONS: "completions",
    GatewayEndpoint.EMBEDDINGS: "embeddings",
}


class GatewayError(Exception):
    """An answer in OpenAI's error shape: {"error": {"message", "type", "code", "param"}}."""

    def __init__(
        self, status: int, message: str, type_: str, code: str | None = None, param: str | None = None, headers=None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers or {}

    def response(self) -> JsonResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        response = JsonResponse(body, status=self.status)
        for name, value in self.headers.items():
            response[name] = value
        return response


def _bad(message: str, param: str | None = None, code: str = "invalid_request") -> GatewayError:
    return GatewayError(400, message, "invalid_request_error", code, param)


# ---- request parsing ------------------------------------------------------------------------------------
def _parse_body(request) -> dict[str, Any]:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    try:
        raw = request.body
    except RequestDataTooBig:
        raw = None
    if raw is None or (limit is not None and len(raw) > limit):
        raise GatewayError(
            413,
            _("The request body is larger than %(limit)s bytes (DATA_UPLOAD_MAX_MEMORY_SIZE).") % {"limit": limit},
            "invalid_request_error",
            "body_too_large",
        )
    try:
        body = json.loads(raw or b"null")
    except ValueError as exc:
        raise _bad(_("The request body is not valid JSON: %(error)s") % {"error": exc}, code="invalid_json") from None
    if not isinstance(body, dict):
        raise _bad(_("The request body must be a JSON object."), code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _bad(_("'model' is required: the name of a model (GET /v1/models lists them)."), "model")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad(_("'stream' must be true or false."), "stream")
    options = body.get("stream_options")
    if options is not None and (
        not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool)
    ):
        raise _bad(_("'stream_options' must be an object like {\"include_usage\": true}."), "stream_options")
    return body


def _content_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _bad(
                    _("%(where)s[%(index)d] must be a text part {'type': 'text', 'text': ...}.")
                    % {"where": where, "index": i},
                    where,
                )
            parts.append(part["text"])
        return "".join(parts)
    if content is None:
        return ""
    raise _bad(_("%(where)s must be a string or a list of text parts.") % {"where": where}, where)


def _check_chat(body: dict[str, Any]) -> list[str]:
    """The chat's messages checked; returns the last user message's text (the record for KServe V2 configs)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad(_("'messages' must be a non-empty list of messages."), "messages")
    last_user = None
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _bad(
                _("messages[%(index)d] must be an object with 'role' and 'content'.") % {"index": i}, f"messages[{i}]"
            )
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant", "tool", "function"):
            raise _bad(
                _("messages[%(index)d].role must be system, user, assistant or tool, not %(role)s.")
                % {"index": i, "role": repr(role)},
                f"messages[{i}].role",
            )
        text = _content_text(message.get("content"), f"messages[{i}].content")
        if role == "user":
            last_user = text
    if last_user is None:
        raise _bad(_("'messages' needs at least one user message."), "messages")
    return [last_user]


def _check_list(body: dict[str, Any], name: str) -> list[str]:
    value = body.get(name)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        if len(value) > 2048:
            raise _bad(_("'%(name)s' may hold at most 2048 items.") % {"name": name}, name)
        return list(value)
    raise _bad(_("'%(name)s' must be a string or a non-empty list of strings.") % {"name": name}, name)


# ---- authentication, model, budget ----------------------------------------------------------------------
def _auth_error(exc: services.GatewayAuthError) -> GatewayError:
    return GatewayError(401, exc.message, "invalid_request_error", exc.code, headers={"WWW-Authenticate": "Bearer"})


async def _db(request, fn, *args):
    """Database work off the event loop: the gateway's reader threads under ASGI; the request's thread under WSGI."""
    if _is_asgi(request):
        return await runtime.db_read(fn, *args)
    return await sync_to_async(fn)(*args)


def _budget_since(key):
    return services.budget_period_start(key.budget_period, timezone.now()) if key.token_budget else None


def _from_cache(digest: str, model: str):
    """(key entry, model entry or None, tokens used or None) when the cache answers everything; else None."""
    entry = caches.key(digest)
    if entry is None:
        return None
    cmodel = caches.model(model) if model else None
    if model and cmodel is None:
        return None
    key, used = entry.key, None
    if key.token_budget and not key.project.runs_paused:
        used = caches.used(key.pk, _budget_since(key))
        if used is None:
            return None
    return entry, cmodel, used


def _fill_sync(text: str, digest: str, model: str):
    """_from_cache's answer, reading what the cache lacks (key, model config, budget total) in one thread hop."""
    loaded = time.monotonic()
    entry = caches.key(digest)
    if entry is None:
        key = services.key_lookup(text)
        entry = CachedKey(key, frozenset(key.allowed_models.values_list("pk", flat=True)), loaded)
        caches.keys[digest] = entry
    cmodel = caches.model(model) if model else None
    if model and cmodel is None:
        config = ModelConfig.objects.filter(name=model).first()
        if config is not None:
            cmodel = CachedModel(config, model_config_endpoint(config), loaded)
            caches.models[model] = cmodel
    key, used = entry.key, None
    if key.token_budget and not key.project.runs_paused:
        since = _budget_since(key)
        used = caches.used(key.pk, since)
        if used is None:
            used = services.key_tokens_used(key, since)
            caches.usage[key.pk] = CachedUsage(since, used, 0, loaded)
    return entry, cmodel, used


async def _admit(request, authorization: str, model: str):
    """(key entry, (config, endpoint) or the GatewayError refusing the model); 401 raised. No thread when cached."""
    try:
        text = services.key_text(authorization)
        digest = services.key_digest(text)
        found = _from_cache(digest, model) or await _db(request, _fill_sync, text, digest, model)
        entry, cmodel, used = found
        key = services.key_check_active(entry.key)
    except services.GatewayAuthError as exc:
        raise _auth_error(exc) from None
    if not model:
        return entry, None
    if cmodel is None:
        return entry, GatewayError(
            404,
            _("The model '%(model)s' does not exist (GET /v1/models lists them).") % {"model": model},
            "invalid_request_error",
            "model_not_found",
            "model",
        )
    if entry.allowed and cmodel.config.pk not in entry.allowed:
        return entry, GatewayError(
            403,
            _("This API key may not use the model '%(model)s'.") % {"model": model},
            "permission_error",
            "model_not_allowed",
            "model",
        )
    refusal = services.key_budget_refusal(key, used=used or 0, since=_budget_since(key) or timezone.now())
    if refusal is not None:
        return entry, GatewayError(429, refusal.message, "insufficient_quota", refusal.code)
    return entry, (cmodel.config, cmodel.endpoint)


def _upstream_error(exc: ModelError) -> GatewayError:
    """A model call's failure as the gateway's answer (the upstream's words, never its key or address)."""
    code = exc.code or type(exc).__name__
    if isinstance(exc, BreakerOpen):
        retry = max(1, int(exc.retry_after + 0.999))
        return GatewayError(
            503,
            _("The model is unavailable (circuit breaker %(state)s); retry in %(seconds)ss.")
            % {"state": exc.state, "seconds": retry},
            "api_error",
            "model_unavailable",
            headers={"Retry-After": str(retry)},
        )
    if isinstance(exc, EndpointRefused):
        return GatewayError(502, _("The model's endpoint is refused by the portal's network guard."), "api_error", code)
    if isinstance(exc, PermanentModelError) and code == "INVALID_ARGUMENT":
        return GatewayError(
            400,
            _("The model rejected the request: %(reason)s") % {"reason": exc.message},
            "invalid_request_error",
            code,
        )
    if isinstance(exc, PermanentModelError) and code == "MESSAGE_TOO_LARGE":
        return GatewayError(
            413,
            _("The model refused the request as too large: %(reason)s") % {"reason": exc.message},
            "invalid_request_error",
            code,
        )
    if code == "DEADLINE_EXCEEDED":
        return GatewayError(
            504, _("The model did not answer in time: %(reason)s") % {"reason": exc.message}, "api_error", code
        )
    if code == "IN_FLIGHT_LIMIT":
        return GatewayError(
            503,
            _("The model is busy: %(reason)s") % {"reason": exc.message},
            "api_error",
            code,
            headers={"Retry-After": "1"},
        )
    return GatewayError(
        502,
        _("The model call failed (%(code)s): %(reason)s") % {"code": code, "reason": exc.message},
        "api_error",
        code,
    )


class _Call:
    """One gateway call being served: what to meter and log when it ends."""

    def __init__(self, key, endpoint: str, body: dict | None, stream: bool) -> None:
        self.key, self.endpoint, self.body, self.stream = key, endpoint, body, stream
        self.model = str((body or {}).get("model") or "")
        self.model_name, self.model_version = "", ""
        self.started = time.perf_counter()
        self.request_id = request_id_var.get() or ""
        self.metered = False
        self.records = 1

    def row(
        self,
        http_status: int,
        status_code: str = "OK",
        *,
        error: str = "",
        prompt: int = 0,
        completion: int = 0,
        attempts: int = 1,
    ) -> dict[str, Any]:
        """The call as a row of services.gateway_calls_record."""
        return {
            "key": self.key,
            "ts": timezone.now(),
            "endpoint": self.endpoint,
            "model": self.model,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "stream": self.stream,
            "http_status": http_status,
            "status_code": status_code,
            "error": error,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "latency_ms": (time.perf_counter() - self.started) * 1000.0,
            "attempts": attempts,
            "records": self.records,
            "request_id": self.request_id,
            "body": self.body,
            "metered": self.metered,
        }

    async def finish(self, request, *args, wait: bool = True, **kwargs) -> None:
        """Meter and log the call. Under ASGI the gateway's writer commits it (with the calls beside it); with
        `wait` (every answered call) the answer is sent only after that commit, so a client never holds an
        answer that is not metered. Without `wait` (refusals, a client that went away) the row is queued."""
        row = self.row(*args, **kwargs)
        tokens = row["prompt_tokens"] + row["completion_tokens"]
        try:
            if not _is_asgi(request):
                await sync_to_async(services.gateway_calls_record)([row])
            elif wait:
                await runtime.meter.record(row)
            else:
                runtime.meter.submit(row)
        except Exception:
            log.exception("could not record gateway call (key %s, model %s)", self.key.prefix, self.model)
        if tokens:
            caches.add_used(self.key.pk, tokens)


def _openai_error_response(exc: GatewayError) -> JsonResponse:
    return exc.response()


# ---- KServe V2 configs: records in, OpenAI answers out -----------------------------------------------------
def _kserve_text(outputs: dict[str, Any]) -> str:
    text = outputs.get("text")
    if isinstance(text, str):
        return text
    return orjson.dumps(outputs, default=str).decode()


async def _kserve_call(call: _Call, config: ModelConfig, endpoint, texts: list[str], body: dict) -> dict[str, Any]:
    client = model_client()
    result = await sync_to_async(client.infer_texts, thread_sensitive=False)(endpoint, texts)
    call.model_name, call.model_version = result.model_name, result.model_version or config.model_version
    call.records = len(texts)
    created = int(time.time())
    usage = {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }
    answer_id = uuid.uuid4().hex[:24]
    if call.endpoint == GatewayEndpoint.EMBEDDINGS:
        data = []
        for i, out in enumerate(result.outputs):
            vector = out.get("embedding")
            if not isinstance(vector, list):
                raise GatewayError(
                    400,
                    _("The model '%(model)s' does not return embeddings.") % {"model": call.model},
                    "invalid_request_error",
                    "not_an_embedding_model",
                    "model",
                )
            data.append({"object": "embedding", "index": i, "embedding": vector})
        answer = {"object": "list", "data": data, "model": call.model, "usage": {**usage, "completion_tokens": 0}}
    elif call.endpoint == GatewayEndpoint.CHAT:
        answer = {
            "id": f"chatcmpl-{answer_id}",
            "object": "chat.completion",
            "created": created,
            "model": call.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": _kserve_text(result.outputs[0])},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        }
    else:
        answer = {
            "id": f"cmpl-{answer_id}",
            "object": "text_completion",
            "created": created,
            "model": call.model,
            "choices": [
                {"index": i, "text": _kserve_text(out), "finish_reason": "stop", "logprobs": None}
                for i, out in enumerate(result.outputs)
            ],
            "usage": usage,
        }
    answer["_attempts"] = result.stats.attempts
    return answer


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _answer_as_events(answer: dict[str, Any], endpoint: str, include_usage: bool) -> list[bytes]:
    """A whole answer as the chunks a streaming server would have sent (KServe V2 configs)."""
    events = []
    base = {"id": answer["id"], "created": answer["created"], "model": answer["model"]}
    for choice in answer["choices"]:
        if endpoint == GatewayEndpoint.CHAT:
            obj = "chat.completion.chunk"
            content = choice["message"]["content"]
            events.append(
                _sse(
                    {
                        **base,
                        "object": obj,
                        "choices": [
                            {
                                "index": choice["index"],
                                "delta": {"role": "assistant", "content": ""},
                                "finish_reason": None,
                            }
                        ],
                    }
                )
            )  # noqa: E501
            events.append(
                _sse(
                    {
                        **base,
                        "object": obj,
                        "choices": [{"index": choice["index"], "delta": {"content": content}, "finish_reason": None}],
                    }
                )
            )  # noqa: E501
            events.append(
                _sse(
                    {
                        **base,
                        "object": obj,
                        "choices": [{"index": choice["index"], "delta": {}, "finish_reason": "stop"}],
                    }
                )
            )  # noqa: E501
        else:
            events.append(
                _sse(
                    {
                        **base,
                        "object": "text_completion",
                        "choices": [{"index": choice["index"], "text": choice["text"], "finish_reason": "stop"}],
                    }
                )
            )  # noqa: E501
    if include_usage:
        kind = "chat.completion.chunk" if endpoint == GatewayEndpoint.CHAT else "text_completion"
        events.append(_sse({**base, "object": kind, "choices": [], "usage": answer["usage"]}))
    events.append(b"data: [DONE]\n\n")
    return events


def _stream_response(events: AsyncIterator[bytes] | list[bytes]) -> StreamingHttpResponse:
    response = StreamingHttpResponse(events, content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    # The lean ASGI app (gateway/asgi.py) sends these bytes as they come and closes the generator itself when
    # the client goes away; Django's handlers (WSGI) iterate the response as usual.
    response.gateway_events = events
    return response


def _is_asgi(request) -> bool:
    return "wsgi.input" not in request.META


# ---- the views ------------------------------------------------------------------------------------------------
async def _serve(request, endpoint: str):
    if _is_asgi(request):
        return await _serve_call(request, endpoint)
    # WSGI: this call's event loop ends with it; its upstream connections are closed while it still runs.
    try:
        return await _serve_call(request, endpoint)
    finally:
        await default_async_pool().aclose_loop()


async def _serve_call(request, endpoint: str):
    authorization = request.headers.get("Authorization", "")
    # Body errors are answered after the key is checked (a caller without a key learns nothing else), but the
    # parse happens first so that the key, the model and the budget are looked up together (one thread hop at
    # most, none when the cache holds them).
    try:
        body, parse_error = _parse_body(request), None
    except GatewayError as exc:
        body, parse_error = None, exc
    model = str(body.get("model")) if body else ""
    try:
        entry, resolved = await _admit(request, authorization, model)
    except GatewayError as exc:
        return exc.response()
    key = entry.key
    try:
        if parse_error is not None:
            raise parse_error
        if endpoint == GatewayEndpoint.CHAT:
            texts = _check_chat(body)
        elif endpoint == GatewayEndpoint.COMPLETIONS:
            texts = _check_list(body, "prompt")
        else:
            texts = _check_list(body, "input")
            if body.get("stream"):
                raise _bad(_("Embeddings cannot be streamed."), "stream")
    except GatewayError as exc:
        call = _Call(key, endpoint, None, False)
        await call.finish(request, exc.status, "INVALID_ARGUMENT", error=exc.message, wait=False)
        return exc.response()
    stream = bool(body.get("stream"))
    call = _Call(key, endpoint, body, stream)
    if isinstance(resolved, GatewayError):
        exc = resolved
        code = {429: "BUDGET_EXCEEDED", 403: "PERMISSION_DENIED"}.get(exc.status, "NOT_FOUND")
        await call.finish(request, exc.status, code, error=exc.message, wait=False)
        return exc.response()
    config, target = resolved
    call.model_name, call.model_version = target.model_name, config.model_version
    call.metered = True
    include_usage = bool((body.get("stream_options") or {}).get("include_usage")) if stream else False
    if target.protocol != OPENAI:
        try:
            answer = await _kserve_call(call, config, target, texts, body)
        except GatewayError as exc:
            await call.finish(request, exc.status, "INVALID_ARGUMENT", error=exc.message)
            return exc.response()
        except ModelError as exc:
            err = _upstream_error(exc)
            await call.finish(request, err.status, exc.code or "UNKNOWN", error=err.message, attempts=exc.attempts or 1)
            return err.response()
        attempts = answer.pop("_attempts", 1)
        usage = answer["usage"]
        await call.finish(
            request, 200, prompt=usage["prompt_tokens"], completion=usage["completion_tokens"], attempts=attempts
        )
        if stream:
            return _stream_response(_answer_as_events(answer, endpoint, include_usage))
        return JsonResponse(answer)
    upstream = {**body, "model": target.model_name}
    client = model_client()
    path = PATHS[endpoint]
    if not stream:
        stats = CallStats()
        try:
            answer = await acall_json(client, target, path, upstream, stats=stats)
        except ModelError as exc:
            err = _upstream_error(exc)
            await call.finish(
                request, err.status, exc.code or "UNKNOWN", error=err.message, attempts=stats.attempts or 1
            )
            return err.response()
        usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
        call.model_name = str(answer.get("model") or target.model_name)
        call.records = len(texts)
        answer["model"] = call.model
        await call.finish(
            request,
            200,
            prompt=int(usage.get("prompt_tokens") or 0),
            completion=int(usage.get("completion_tokens") or 0),
            attempts=stats.attempts or 1,
        )
        return HttpResponse(orjson.dumps(answer), content_type="application/json")
    result = StreamResult()
    # The events of each network piece together, and the stream's end (the usage chunk, [DONE]) held back in
    # result.end until the call is metered.
    pieces = astream_pieces(client, target, path, upstream, result, forward_usage=include_usage, hold_end=True)
    try:
        first = await pieces.__anext__()
    except StopAsyncIteration:
        first = []
    except ModelError as exc:
        err = _upstream_error(exc)
        await call.finish(
            request, err.status, exc.code or "UNKNOWN", error=err.message, attempts=result.stats.attempts or 1
        )
        return err.response()

    def ended(completed: bool) -> tuple[tuple, dict]:
        code = (result.error_code or "UNKNOWN") if result.error else ("OK" if completed else "CANCELLED")
        if result.model_name:
            call.model_name = result.model_name
        error = result.error or ("" if completed else _("the client went away before the stream ended"))
        kwargs = {
            "error": error,
            "prompt": result.prompt_tokens,
            "completion": result.completion_tokens,
            "attempts": result.stats.attempts or 1,
        }
        return (200, code), kwargs

    async def relay() -> AsyncIterator[bytes]:
        # Each piece's events go straight through as one write (one ASGI send, one socket write for all the events
        # that queued while the previous write went out). Only the stream's end is held back (the usage chunk the
        # client asked for, and [DONE]) until the call is metered: a client that saw its stream end was metered.
        metered = False
        try:
            if first:
                yield first[0] if len(first) == 1 else b"".join(first)
            async for events in pieces:
                if events:
                    yield events[0] if len(events) == 1 else b"".join(events)
            args, kwargs = ended(True)
            metered = True
            await call.finish(request, *args, **kwargs)
            if result.end:
                yield b"".join(result.end)
        finally:
            await pieces.aclose()
            if not metered:
                args, kwargs = ended(False)
                await call.finish(request, *args, wait=False, **kwargs)

    if _is_asgi(request):
        return _stream_response(relay())
    # WSGI (runserver, the one-command dev server): the events are gathered in this event loop, then sent.
    gathered = [event async for event in relay()]
    return _stream_response(gathered)


def _allow(*methods: str):
    """Like Django's require_http_methods, with the refusal in OpenAI's error shape (405 and an Allow header)."""

    def decorator(view):
        async def wrapped(request, *args, **kwargs):
            if request.method not in methods:
                return GatewayError(
                    405,
                    _("Method %(method)s is not allowed here; use %(allowed)s.")
                    % {"method": request.method, "allowed": ", ".join(methods)},
                    "invalid_request_error",
                    "method_not_allowed",
                    headers={"Allow": ", ".join(methods)},
                ).response()
            return await view(request, *args, **kwargs)

        wrapped.__name__, wrapped.__doc__ = view.__name__, view.__doc__
        return wrapped

    return decorator


@csrf_exempt
@_allow("POST")
async def chat_completions(request):
    """POST /v1/chat/completions (stream: true answers with server-sent events)."""
    return await _serve(request, GatewayEndpoint.CHAT)


@csrf_exempt
@_allow("POST")
async def completions(request):
    """POST /v1/completions."""
    return await _serve(request, GatewayEndpoint.COMPLETIONS)


@csrf_exempt
@_allow("POST")
async def embeddings(request):
    """POST /v1/embeddings."""
    return await _serve(request, GatewayEndpoint.EMBEDDINGS)


def _models_sync(allowed: frozenset[int]) -> list[dict[str, Any]]:
    rows = ModelConfig.objects.order_by("name")
    if allowed:
        rows = rows.filter(pk__in=allowed)
    return [
        {
            "id": c.name,
            "object": "model",
            "created": int(c.created_at.timestamp()),
            "owned_by": "dataflare",
            "protocol": c.protocol,
        }
        for c in rows
    ]


@csrf_exempt
@_allow("GET", "HEAD")
async def models(request, model: str | None = None):
    """GET /v1/models (the model configs this key may call) and GET /v1/models/{model}."""
    try:
        entry, _resolved = await _admit(request, request.headers.get("Authorization", ""), "")
    except GatewayError as exc:
        return exc.response()
    data = await _db(request, _models_sync, entry.allowed)
    if model is None:
        return JsonResponse({"object": "list", "data": data})
    for item in data:
        if item["id"] == model:
            return JsonResponse(item)
    return GatewayError(
        404,
        _("The model '%(model)s' does not exist or this key may not use it.") % {"model": model},
        "invalid_request_error",
        "model_not_found",
        "model",
    ).response()


@csrf_exempt
async def not_found(request, rest: str = ""):
    """Anything else under /v1/: OpenAI's error shape, not the console's login page."""
    return GatewayError(
        404, _("Unknown gateway URL /v1/%(path)s.") % {"path": rest}, "invalid_request_error", "unknown_url"
    ).response()
