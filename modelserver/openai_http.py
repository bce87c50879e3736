"""The reference server's OpenAI-compatible HTTP face: the same built-in models, fault knobs and token counts.

Routes (under `/v1`): `GET /models`, `POST /chat/completions` (with `stream: true` as server-sent events),
`POST /completions` (a prompt or a list of prompts; streaming too) and `POST /embeddings` (`text-embedder`).
A chat or completion answer is the JSON object of the model's outputs for the record (JSON outputs such as
the annotation embedded as structures), so `response_format: {"type": "json_object"}` always holds.
Usage is counted with the same tokenizer as the gRPC face: prompt = tokens of the text read, completion =
tokens of the answer emitted. `OpenAIFace.usage` totals what was reported, for tests that reconcile.

The fault injector is the gRPC server's when both run (`serve(http_port=...)`): inference routes are the
`ModelInfer` method, `/models` is `ModelMetadata`. An injected status is sent as its HTTP equivalent, with
`Retry-After` when `FaultSettings.retry_after_s` is set. Standard library only (ThreadingHTTPServer).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import select
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc

from .faults import FaultInjector, FaultSettings
from .models import InvalidInput, Params, TextModel, build_registry
from .text import count_tokens, tokenize

__all__ = ["HTTP_STATUS", "OpenAIFace", "OpenAIServerHandle", "TextEmbedder", "serve_openai"]

log = logging.getLogger(__name__)

# gRPC status of an injected fault -> the HTTP status an OpenAI-compatible server would send.
HTTP_STATUS = {
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
MAX_BODY_BYTES = 32 * 1024 * 1024
# Request keys that are the protocol's, not model parameters.
_PROTOCOL_KEYS = frozenset(
    {"model", "messages", "prompt", "input", "stream", "stream_options", "response_format", "n", "user"}
)
# Per-record outputs that only carry accounting (the annotator's); they are the `usage`, not the answer.
_ACCOUNTING_OUTPUTS = frozenset({"prompt_tokens", "completion_tokens"})


class _HttpError(Exception):
    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", retry_after: float | None = None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.retry_after = retry_after


# ---- an embedding model -----------------------------------------------------------------------------------
class TextEmbedder:
    """Signed feature hashing of lower-cased tokens and token bigrams into `dimensions` floats, L2-normalised.

    Deterministic and download-free: texts sharing words get a high cosine similarity.
    """

    name = "text-embedder"
    version = "1"

    def embed(self, texts: list[str], dimensions: int) -> tuple[list[list[float]], int]:
        """(one vector per text, prompt tokens read)."""
        vectors, read = [], 0
        for text in texts:
            tokens = [t.lower() for t in tokenize(text)]
            read += len(tokens)
            vec = [0.0] * dimensions
            for feature in tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:], strict=False)]:
                digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
                value = int.from_bytes(digest, "little")
                vec[value % dimensions] += 1.0 if (value >> 63) & 1 else -1.0
            norm = math.sqrt(sum(v * v for v in vec)) or 1.0
            vectors.append([round(v / norm, 6) for v in vec])
        return vectors, read


# ---- the face -----------------------------------------------------------------------------------------------
@dataclass
class Usage:
    """What the face reported in `usage` over all successful answers."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, prompt: int, completion: int) -> None:
        with self.lock:
            self.requests += 1
            self.prompt_tokens += prompt
            self.completion_tokens += completion


class OpenAIFace:
    """Answers OpenAI-compatible requests from the built-in models."""

    def __init__(
        self, models: Mapping[str, TextModel], faults: FaultInjector, *, api_key: str = "", max_batch: int = 8192
    ) -> None:
        self.models = dict(models)
        self.embedders = {TextEmbedder.name: TextEmbedder()}
        self.faults = faults
        self.api_key = api_key
        self.max_batch = max_batch
        self.usage = Usage()

    def model_list(self) -> dict[str, Any]:
        names = [*self.models, *self.embedders]
        return {
            "object": "list",
            "data": [{"id": n, "object": "model", "created": 0, "owned_by": "dataflare"} for n in names],
        }

    def _model(self, body: Mapping[str, Any]) -> TextModel:
        name = body.get("model")
        model = self.models.get(name) if isinstance(name, str) else None
        if model is None:
            raise _HttpError(404, f"unknown model {name!r}; have {sorted(self.models)}", "not_found_error")
        return model

    def _check_records(self, texts: list[str], body: Mapping[str, Any]) -> None:
        if not texts:
            raise _HttpError(400, "empty batch: send at least one record")
        if len(texts) > self.max_batch:
            raise _HttpError(400, f"batch of {len(texts)} records exceeds the limit of {self.max_batch}")
        marker = body.get("poison_marker") or self.faults.settings.poison_marker
        for i, text in enumerate(texts):
            if marker and marker in text:
                raise _HttpError(400, f"record {i} contains the poison marker {marker!r}")

    def _answers(self, model: TextModel, texts: list[str], body: Mapping[str, Any]) -> tuple[list[str], int]:
        """(the JSON text of each record's outputs, the prompt tokens the model read)."""
        params = Params({k: v for k, v in body.items() if k not in _PROTOCOL_KEYS})
        try:
            prediction = model.predict(texts, params)
        except InvalidInput as exc:
            raise _HttpError(400, str(exc)) from None
        answers: list[dict[str, Any]] = [{} for _ in texts]
        for out in prediction.outputs:
            if out.name in _ACCOUNTING_OUTPUTS:
                continue
            width = len(out.values) // max(1, len(texts))
            for i in range(len(texts)):
                values = out.values[i * width : (i + 1) * width]
                value = values[0] if width == 1 else values
                if isinstance(value, bytes):
                    value = value.decode("utf-8")
                if isinstance(value, str) and value[:1] in "{[":
                    try:
                        value = json.loads(value)
                    except ValueError:
                        pass
                if isinstance(value, float):
                    value = round(value, 6)
                answers[i][out.name] = value
        return [json.dumps(a, ensure_ascii=False, sort_keys=True) for a in answers], prediction.prompt_tokens

    def chat(self, body: Mapping[str, Any]) -> tuple[dict[str, Any], list[str], int]:
        """(response without choices, the answers, prompt tokens) of a chat completion."""
        model = self._model(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _HttpError(400, "messages must be a non-empty list")
        contents = []
        for i, message in enumerate(messages):
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list):  # content parts: the text parts count
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            if not isinstance(content, str):
                raise _HttpError(400, f"messages[{i}].content must be a string")
            contents.append(content)
        users = [c for m, c in zip(messages, contents, strict=True) if m.get("role", "user") == "user"]
        if not users:
            raise _HttpError(400, "messages must hold a user message")
        text = users[-1]
        self._check_records([text], body)
        answers, read = self._answers(model, [text], body)
        # The model counted the record it read; the other messages count too (the server read them).
        others = list(contents)
        others.remove(text)
        prompt = read + sum(count_tokens(c) for c in others)
        return {"object": "chat.completion", "model": model.name}, answers, prompt

    def completions(self, body: Mapping[str, Any]) -> tuple[dict[str, Any], list[str], int]:
        model = self._model(body)
        prompt = body.get("prompt")
        texts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise _HttpError(400, "prompt must be a string or a list of strings")
        self._check_records(texts, body)
        answers, read = self._answers(model, texts, body)
        return {"object": "text_completion", "model": model.name}, answers, read

    def embeddings(self, body: Mapping[str, Any]) -> dict[str, Any]:
        name = body.get("model")
        embedder = self.embedders.get(name) if isinstance(name, str) else None
        if embedder is None:
            raise _HttpError(404, f"unknown embedding model {name!r}; have {sorted(self.embedders)}", "not_found_error")
        raw = body.get("input")
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise _HttpError(400, "input must be a string or a list of strings")
        self._check_records(texts, body)
        dimensions = body.get("dimensions", 64)
        if not isinstance(dimensions, int) or isinstance(dimensions, bool) or not 1 <= dimensions <= 4096:
            raise _HttpError(400, f"dimensions must be an integer in [1, 4096], got {dimensions!r}")
        vectors, read = embedder.embed(texts, dimensions)
        self.usage.add(read, 0)
        return {
            "object": "list",
            "model": embedder.name,
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": read, "total_tokens": read},
        }


# ---- HTTP plumbing ------------------------------------------------------------------------------------------
def _client_gone(sock: socket.socket) -> bool:
    """True when the client closed its side (readable with nothing to read)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle's algorithm and the client's delayed
        # ACK hold every answer for ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (BaseHTTPRequestHandler's name)
        log.debug("%s " + format, self.address_string(), *args)

    # -- responses

    def _send_json(self, status: int, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, exc: _HttpError) -> None:
        headers = {}
        if exc.retry_after is not None:
            headers["retry-after"] = f"{exc.retry_after:g}"
        self._send_json(exc.status, {"error": {"message": exc.message, "type": exc.kind, "code": None}}, headers)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    # -- routing

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        face = self.server.face
        path = self.path.split("?", 1)[0].rstrip("/")
        routes = {
            ("GET", "/v1/models"): "ModelMetadata",
            ("POST", "/v1/chat/completions"): "ModelInfer",
            ("POST", "/v1/completions"): "ModelInfer",
            ("POST", "/v1/embeddings"): "ModelInfer",
        }
        try:
            body = self._read_body() if method == "POST" else {}
            fault_method = routes.get((method, path))
            if fault_method is None:
                raise _HttpError(404, f"no route {method} {path}", "not_found_error")
            if face.api_key and self.headers.get("authorization") != f"Bearer {face.api_key}":
                raise _HttpError(401, "invalid or missing API key", "authentication_error")
            code = face.faults.inject(fault_method, lambda: not _client_gone(self.connection))
            if code == "gone":
                self.close_connection = True
                return
            if code is not None:
                raise _HttpError(
                    HTTP_STATUS.get(code, 500),
                    f"injected fault ({code.name})",
                    "server_error",
                    retry_after=face.faults.settings.retry_after_s,
                )
            if path == "/v1/models":
                self._send_json(200, face.model_list())
            elif path == "/v1/embeddings":
                self._send_json(200, face.embeddings(body))
            else:
                chat = path == "/v1/chat/completions"
                head, answers, prompt = face.chat(body) if chat else face.completions(body)
                self._answer(head, answers, prompt, body, chat)
        except _HttpError as exc:
            self._send_error(exc)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _read_body(self) -> dict[str, Any]:
        length = self.headers.get("content-length")
        if length is None or not length.isdigit():
            raise _HttpError(411, "a content-length is required")
        if int(length) > MAX_BODY_BYTES:
            self.close_connection = True
            raise _HttpError(413, f"request body above {MAX_BODY_BYTES} bytes")
        raw = self.rfile.read(int(length))
        try:
            body = json.loads(raw)
        except ValueError:
            raise _HttpError(400, "the request body is not JSON") from None
        if not isinstance(body, dict):
            raise _HttpError(400, "the request body must be a JSON object")
        return body

    def _answer(self, head: dict[str, Any], answers: list[str], prompt: int, body: Mapping[str, Any], chat: bool):
        completion = sum(count_tokens(a) for a in answers)
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        if not body.get("stream"):
            if chat:
                choices = [
                    {"index": i, "message": {"role": "assistant", "content": a}, "finish_reason": "stop"}
                    for i, a in enumerate(answers)
                ]
            else:
                choices = [{"index": i, "text": a, "finish_reason": "stop"} for i, a in enumerate(answers)]
            self.server.face.usage.add(prompt, completion)
            self._send_json(200, {"id": ident, "created": created, **head, "choices": choices, "usage": usage})
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        obj = "chat.completion.chunk" if chat else "text_completion"
        base = {"id": ident, "object": obj, "created": created, "model": head["model"]}

        def event(choices: list[dict[str, Any]], **extra: Any) -> None:
            self._chunk(b"data: " + json.dumps({**base, "choices": choices, **extra}).encode() + b"\n\n")

        for i, answer in enumerate(answers):
            if chat:
                event([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            for piece in _pieces(answer):
                delta = {"delta": {"content": piece}} if chat else {"text": piece}
                event([{"index": i, **delta, "finish_reason": None}])
            event([{"index": i, ("delta" if chat else "text"): {} if chat else "", "finish_reason": "stop"}])
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            event([], usage=usage)
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")
        self.server.face.usage.add(prompt, completion)


def _pieces(text: str, size: int = 16) -> Iterable[str]:
    """The answer in small pieces, as a token stream would arrive."""
    for start in range(0, len(text), size):
        yield text[start : start + size]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default listen backlog is 5: 50 clients connecting at once overflowed it, and the
    # refused SYNs were retried by the kernel after 1 s (bench/gateway_bench.py's direct p95 at 50 clients).
    request_queue_size = 256
    # Refuse a second server on the same port instead of silently sharing it.
    allow_reuse_address = False
    face: OpenAIFace


@dataclass
class OpenAIServerHandle:
    """A running HTTP face: base URL, fault knobs, reported usage, stop()."""

    server: _Server
    thread: threading.Thread
    host: str
    port: int
    face: OpenAIFace
    scheme: str = "http"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL clients take ("http://127.0.0.1:PORT/v1")."""
        return f"{self.scheme}://{self.host}:{self.port}/v1"

    @property
    def faults(self) -> FaultInjector:
        return self.face.faults

    @property
    def usage(self) -> Usage:
        return self.face.usage

    def stop(self) -> None:
        """Release hung requests and stop serving."""
        self.face.faults.configure(hang=False)
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_openai(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    faults: FaultInjector | FaultSettings | None = None,
    models: Iterable[TextModel] | None = None,
    api_key: str = "",
    max_batch: int = 8192,
    tls: Any = None,
) -> OpenAIServerHandle:
    """Start the OpenAI-compatible face in a background thread (port 0 picks a free port).

    Args:
        faults: an injector to share (the gRPC server's) or settings for a new one.
        api_key: when set, requests must send `Authorization: Bearer <api_key>`.
        tls: a `server.TlsFiles` to serve HTTPS (the gRPC server's certificate).
    """
    injector = faults if isinstance(faults, FaultInjector) else FaultInjector(faults)
    registry = {m.name: m for m in models} if models is not None else build_registry()
    server = _Server((host, port), _Handler)
    scheme = "http"
    if tls is not None:
        import ssl
        import tempfile

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = f"{tmp}/cert.pem", f"{tmp}/key.pem"
            for path, data in ((cert, tls.cert_chain), (key, tls.private_key)):
                with open(path, "wb") as fh:
                    fh.write(data)
            context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    server.face = OpenAIFace(registry, injector, api_key=api_key, max_batch=max_batch)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.name = "modelserver-openai"
    thread.start()
    bound = server.server_address[1]
    log.info("modelserver OpenAI-compatible API on %s://%s:%s/v1", scheme, host, bound)
    return OpenAIServerHandle(server, thread, host, bound, server.face, scheme)
