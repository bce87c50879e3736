"""KServe V2 gRPC servicer over the built-in text models, plus `serve()` for process and tests."""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Mapping
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from .faults import FaultInjector, FaultSettings
from .models import InvalidInput, OutputTensor, Params, TextModel, build_registry
from .openai_http import OpenAIServerHandle, serve_openai
from .protocol import pb, pb_grpc

__all__ = ["InferenceServicer", "ServerHandle", "TlsFiles", "serve"]

log = logging.getLogger(__name__)

SERVER_NAME = "dataflare-modelserver"
SERVER_VERSION = "1.0"
SERVICE_NAME = "inference.GRPCInferenceService"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_BATCH = 8192


class _Reject(Exception):
    """Internal: abort the current RPC with a status code and message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _param_value(p: pb.InferParameter) -> Any:
    """Unwrap an InferParameter oneof into a Python value."""
    kind = p.WhichOneof("parameter_choice")
    return getattr(p, kind) if kind else None


def _decode_raw_bytes(raw: bytes) -> list[bytes]:
    """Split a raw BYTES tensor: each element is a 4-byte little-endian length then the data."""
    out, pos = [], 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise _Reject(grpc.StatusCode.INVALID_ARGUMENT, "truncated length prefix in raw BYTES")
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise _Reject(grpc.StatusCode.INVALID_ARGUMENT, "raw BYTES element overruns buffer")
        out.append(raw[pos : pos + n])
        pos += n
    return out


def _fill_contents(tensor: pb.ModelInferResponse.InferOutputTensor, out: OutputTensor) -> None:
    """Copy values into the typed contents field matching the datatype."""
    c = tensor.contents
    if out.datatype == "BYTES":
        c.bytes_contents.extend(v.encode("utf-8") if isinstance(v, str) else v for v in out.values)
    elif out.datatype == "FP32":
        c.fp32_contents.extend(out.values)
    elif out.datatype == "FP64":
        c.fp64_contents.extend(out.values)
    elif out.datatype == "INT64":
        c.int64_contents.extend(out.values)
    elif out.datatype in {"INT8", "INT16", "INT32"}:
        c.int_contents.extend(out.values)
    elif out.datatype == "BOOL":
        c.bool_contents.extend(out.values)
    else:  # a programming error in a model, not a client error
        raise TypeError(f"unsupported output datatype {out.datatype}")


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Serves the registry's models; every model takes a BYTES tensor of UTF-8 records."""

    def __init__(
        self,
        models: Mapping[str, TextModel],
        faults: FaultInjector,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        ready: bool = True,
    ) -> None:
        """Serve `models`, injecting `faults`; batches above max_batch are refused."""
        self.models = dict(models)
        self.faults = faults
        self.max_batch = max_batch
        self.ready = ready

    # -- health and metadata

    def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.ServicerContext) -> Any:
        """The process answers, so it is live."""
        self.faults.apply("ServerLive", context)
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.ServicerContext) -> Any:
        """Ready once models are loaded (they are built in, so at start)."""
        self.faults.apply("ServerReady", context)
        return pb.ServerReadyResponse(ready=self.ready)

    def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.ServicerContext) -> Any:
        """A known model at a matching (or unspecified) version is ready."""
        self.faults.apply("ModelReady", context)
        model = self.models.get(request.name)
        ok = self.ready and model is not None and request.version in ("", model.version)
        return pb.ModelReadyResponse(ready=ok)

    def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.ServicerContext) -> Any:
        """Name and version of this server; no optional extensions."""
        self.faults.apply("ServerMetadata", context)
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION)

    def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.ServicerContext) -> Any:
        """Tensor signatures of one model."""
        self.faults.apply("ModelMetadata", context)
        try:
            model = self._model(request.name, request.version)
        except _Reject as e:
            context.abort(e.code, e.message)
        meta = pb.ModelMetadataResponse
        return meta(
            name=model.name,
            versions=[model.version],
            platform="dataflare-python",
            inputs=[meta.TensorMetadata(name=t.name, datatype=t.datatype, shape=t.shape) for t in model.inputs],
            outputs=[meta.TensorMetadata(name=t.name, datatype=t.datatype, shape=t.shape) for t in model.outputs],
        )

    # -- inference

    def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.ServicerContext) -> Any:
        """Decode the records, validate, run the model and report token usage."""
        self.faults.apply("ModelInfer", context)
        try:
            model = self._model(request.model_name, request.model_version)
            params = {k: _param_value(v) for k, v in request.parameters.items()}
            texts = self._decode_texts(model, request, params)
            prediction = model.predict(texts, Params(params))
            wanted = [o.name for o in request.outputs]
            produced = {o.name: o for o in prediction.outputs}
            unknown = [n for n in wanted if n not in {t.name for t in model.outputs}]
            if unknown:
                raise _Reject(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"unknown output(s) {unknown} for {model.name}",
                )
        except _Reject as e:
            context.abort(e.code, e.message)
        except InvalidInput as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        response = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=request.id)
        response.parameters["prompt_tokens"].int64_param = prediction.prompt_tokens
        response.parameters["completion_tokens"].int64_param = prediction.completion_tokens
        for name in wanted or list(produced):
            out = produced.get(name)
            if out is None:  # an optional output this request did not enable
                continue
            tensor = response.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
            _fill_contents(tensor, out)
        return response

    def _model(self, name: str, version: str) -> TextModel:
        """Look a model up; unknown names and versions are NOT_FOUND, as in Triton."""
        model = self.models.get(name)
        if model is None:
            raise _Reject(grpc.StatusCode.NOT_FOUND, f"unknown model {name!r}; have {sorted(self.models)}")
        if version not in ("", model.version):
            raise _Reject(grpc.StatusCode.NOT_FOUND, f"model {name!r} has no version {version!r}")
        return model

    def _decode_texts(self, model: TextModel, request: pb.ModelInferRequest, params: Mapping[str, Any]) -> list[str]:
        """Turn the single BYTES input into UTF-8 strings, naming the first bad record."""
        bad = grpc.StatusCode.INVALID_ARGUMENT
        expected = model.inputs[0]
        if len(request.inputs) != 1:
            raise _Reject(
                bad,
                f"{model.name} takes one input {expected.name!r}, got {len(request.inputs)}",
            )
        tensor = request.inputs[0]
        if tensor.name != expected.name or tensor.datatype != "BYTES":
            raise _Reject(
                bad,
                f"{model.name} expects input {expected.name!r} of datatype BYTES, "
                f"got {tensor.name!r} of {tensor.datatype!r}",
            )
        if request.raw_input_contents:
            if tensor.HasField("contents"):
                raise _Reject(bad, "use either contents or raw_input_contents, not both")
            items = _decode_raw_bytes(request.raw_input_contents[0])
        else:
            items = list(tensor.contents.bytes_contents)
        shape = list(tensor.shape)
        n = 1
        for d in shape:
            n *= d
        # Records travel as shape [N] (or [N, 1], as some clients send a column).
        if not shape or len(shape) > 2 or (len(shape) == 2 and shape[1] != 1) or n != len(items):
            raise _Reject(bad, f"shape {shape} does not match {len(items)} elements; send shape [N]")
        if not items:
            raise _Reject(bad, "empty batch: send at least one record")
        if len(items) > self.max_batch:
            raise _Reject(bad, f"batch of {len(items)} records exceeds the limit of {self.max_batch}")
        marker = params.get("poison_marker") or self.faults.settings.poison_marker
        texts = []
        for i, raw in enumerate(items):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _Reject(bad, f"record {i} is not valid UTF-8 (byte {e.start})") from None
            if marker and marker in text:
                raise _Reject(bad, f"record {i} contains the poison marker {marker!r}")
            texts.append(text)
        return texts


@dataclass(frozen=True)
class TlsFiles:
    """PEM material for serving TLS; a client CA turns on mutual TLS."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None


@dataclass
class ServerHandle:
    """A running server: its bound port, fault knobs, health servicer and a stop()."""

    server: grpc.Server
    host: str
    port: int
    faults: FaultInjector
    health: health.HealthServicer
    servicer: InferenceServicer
    # The OpenAI-compatible HTTP face, sharing the fault injector (serve(http_port=...)).
    http: OpenAIServerHandle | None = None

    @property
    def address(self) -> str:
        """host:port for clients."""
        return f"{self.host}:{self.port}"

    def set_serving(self, serving: bool) -> None:
        """Flip the standard health status of the server and every model."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", SERVICE_NAME, *self.servicer.models]:
            self.health.set(name, status)
        self.servicer.ready = serving

    def stop(self, grace: float | None = 1.0) -> None:
        """Report NOT_SERVING, release hung calls, then stop within `grace` seconds."""
        self.health.enter_graceful_shutdown()
        self.faults.configure(hang=False)
        if self.http is not None:
            self.http.stop()
        self.server.stop(grace).wait()

    def wait(self) -> None:
        """Block until the server terminates."""
        self.server.wait_for_termination()


def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    faults: FaultSettings | None = None,
    models: Iterable[TextModel] | None = None,
    max_workers: int = 32,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_batch: int = DEFAULT_MAX_BATCH,
    tls: TlsFiles | None = None,
    http_port: int | None = None,
    api_key: str = "",
) -> ServerHandle:
    """Start the server (port 0 picks a free port) and return a handle with the bound port.

    Args:
        host: interface to bind; loopback by default.
        port: TCP port, or 0 for any free port (tests).
        faults: initial fault settings; adjust later through `handle.faults`.
        models: model instances to serve; all built-in models by default.
        max_workers: handler threads; hung calls hold one each until their deadline.
        max_message_bytes: send and receive limit (records are batched into one message).
        max_batch: most records accepted in one call.
        tls: serve TLS (and mutual TLS when a client CA is given).
        http_port: also serve the OpenAI-compatible HTTP API on this port (0 = any free port) with the same
            models and fault injector; None = gRPC only.
        api_key: bearer token the HTTP face requires ("" = none).

    Returns:
        A started ServerHandle.
    """
    registry = {m.name: m for m in models} if models is not None else build_registry()
    injector = FaultInjector(faults)
    servicer = InferenceServicer(registry, injector, max_batch=max_batch)
    options = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        # Refuse a second server on the same port instead of silently sharing it.
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="modelserver"),
        options=options,
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    target = f"{host}:{port}"
    if tls is None:
        bound = server.add_insecure_port(target)
    else:
        creds = grpc.ssl_server_credentials(
            [(tls.private_key, tls.cert_chain)],
            root_certificates=tls.client_ca,
            require_client_auth=tls.client_ca is not None,
        )
        bound = server.add_secure_port(target, creds)
    if bound == 0:
        raise OSError(f"could not bind {target}")
    server.start()
    handle = ServerHandle(server, host, bound, injector, health_servicer, servicer)
    if http_port is not None:
        try:
            handle.http = serve_openai(
                host,
                http_port,
                faults=injector,
                models=registry.values(),
                api_key=api_key,
                max_batch=max_batch,
                tls=tls,
            )
        except OSError:
            server.stop(0)
            raise
    handle.set_serving(True)
    log.info("modelserver listening on %s (models: %s)", handle.address, ", ".join(registry))
    return handle
