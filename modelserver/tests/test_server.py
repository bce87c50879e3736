"""The reference server over real gRPC: protocol, health, validation and fault knobs."""

from __future__ import annotations

import struct
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelserver.faults import FaultSettings
from modelserver.protocol import pb, pb_grpc
from modelserver.server import ServerHandle
from modelserver.testing import running_server
from modelserver.text import count_tokens

REPO = Path(__file__).resolve().parents[2]


def _stub(handle: ServerHandle) -> tuple[grpc.Channel, pb_grpc.GRPCInferenceServiceStub]:
    channel = grpc.insecure_channel(handle.address)
    return channel, pb_grpc.GRPCInferenceServiceStub(channel)


def _request(model: str, items: list[bytes], **params: object) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model, id="req-1")
    req.inputs.add(name="text", datatype="BYTES", shape=[len(items)]).contents.bytes_contents.extend(items)
    for k, v in params.items():
        if isinstance(v, int):
            req.parameters[k].int64_param = v
        else:
            req.parameters[k].string_param = str(v)
    return req


@pytest.fixture
def stub(model_server: ServerHandle):
    channel, s = _stub(model_server)
    yield s
    channel.close()


def test_it_serves_standard_health_and_flips_to_not_serving(model_server: ServerHandle) -> None:
    with grpc.insecure_channel(model_server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService", "annotator"):
            resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        model_server.set_serving(False)
        resp = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING
        kserve = pb_grpc.GRPCInferenceServiceStub(channel)
        assert kserve.ServerReady(pb.ServerReadyRequest(), timeout=5).ready is False


def test_it_answers_kserve_liveness_readiness_and_metadata(stub) -> None:
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live
    assert stub.ServerReady(pb.ServerReadyRequest(), timeout=5).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="token-counter"), timeout=5).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="nope"), timeout=5).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="annotator", version="9"), timeout=5).ready
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="quality-scorer"), timeout=5)
    assert [(t.name, t.datatype) for t in meta.inputs] == [("text", "BYTES")]
    assert {t.name for t in meta.outputs} == {"score", "keep", "signals"}
    with pytest.raises(grpc.RpcError) as exc:
        stub.ModelMetadata(pb.ModelMetadataRequest(name="nope"), timeout=5)
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND


def test_it_batches_many_records_and_reports_token_usage(stub) -> None:
    texts = [f"Record {i}: the quick brown fox, number {i}." for i in range(1000)]
    resp = stub.ModelInfer(_request("token-counter", [t.encode() for t in texts]), timeout=10)
    assert resp.id == "req-1"
    assert (resp.model_name, resp.model_version) == ("token-counter", "1")
    (out,) = resp.outputs
    assert list(out.shape) == [1000]
    assert list(out.contents.int64_contents) == [count_tokens(t) for t in texts]
    assert resp.parameters["prompt_tokens"].int64_param == sum(count_tokens(t) for t in texts)
    assert resp.parameters["completion_tokens"].int64_param == 0


def test_it_accepts_raw_input_contents_and_returns_only_requested_outputs(stub) -> None:
    items = ["第一条记录。".encode(), b"second record"]
    req = pb.ModelInferRequest(model_name="annotator")
    req.inputs.add(name="text", datatype="BYTES", shape=[2])
    req.raw_input_contents.append(b"".join(struct.pack("<I", len(b)) + b for b in items))
    req.outputs.add(name="completion_tokens")
    resp = stub.ModelInfer(req, timeout=5)
    assert [o.name for o in resp.outputs] == ["completion_tokens"]
    assert sum(resp.outputs[0].contents.int64_contents) == resp.parameters["completion_tokens"].int64_param > 0


@pytest.mark.parametrize(
    ("req_factory", "message"),
    [
        (
            lambda: _request("token-counter", [b"ok", b"ok", b"\xff\xfe bad"]),
            "record 2 is not valid UTF-8",
        ),
        (
            lambda: _request("token-counter", [b"ok", b"has XX-POISON"], poison_marker="XX-POISON"),
            "record 1 contains the poison marker",
        ),
        (lambda: _request("token-counter", []), "empty batch"),
        (lambda: _request("annotator", [b"x"], max_tokens=-5), "max_tokens"),
        (lambda: pb.ModelInferRequest(model_name="annotator"), "takes one input"),
    ],
)
def test_it_rejects_bad_input_with_invalid_argument_naming_the_problem(stub, req_factory, message) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        stub.ModelInfer(req_factory(), timeout=5)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in exc.value.details()


def test_it_rejects_shape_and_name_mismatches(stub) -> None:
    req = _request("token-counter", [b"a", b"b"])
    req.inputs[0].shape[:] = [3]
    with pytest.raises(grpc.RpcError, match="shape"):
        stub.ModelInfer(req, timeout=5)
    req = _request("token-counter", [b"a"])
    req.inputs[0].name = "prompt"
    with pytest.raises(grpc.RpcError, match="expects input 'text'"):
        stub.ModelInfer(req, timeout=5)
    with pytest.raises(grpc.RpcError) as exc:
        stub.ModelInfer(_request("gpt-9", [b"a"]), timeout=5)
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND


def test_server_level_poison_marker_applies_without_request_parameter() -> None:
    with running_server(FaultSettings(poison_marker="<<bad>>")) as handle:
        channel, stub = _stub(handle)
        with channel, pytest.raises(grpc.RpcError, match="record 0 contains"):
            stub.ModelInfer(_request("token-counter", [b"x <<bad>> y"]), timeout=5)


def test_error_rate_injects_the_configured_code_only_into_model_infer(model_server, stub) -> None:
    model_server.faults.configure(error_rate=1.0, error_code=grpc.StatusCode.RESOURCE_EXHAUSTED)
    for _ in range(3):
        with pytest.raises(grpc.RpcError) as exc:
            stub.ModelInfer(_request("token-counter", [b"a"]), timeout=5)
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live
    assert model_server.faults.injected_errors == 3
    model_server.faults.configure(error_rate=0.0)
    assert stub.ModelInfer(_request("token-counter", [b"a"]), timeout=5).outputs


def _failure_pattern(seed: int, calls: int = 40) -> list[bool]:
    with running_server(FaultSettings(error_rate=0.5, seed=seed)) as handle:
        channel, stub = _stub(handle)
        pattern = []
        with channel:
            for _ in range(calls):
                try:
                    stub.ModelInfer(_request("token-counter", [b"a"]), timeout=5)
                    pattern.append(False)
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.UNAVAILABLE
                    pattern.append(True)
        return pattern


def test_seeded_error_rate_is_reproducible() -> None:
    first = _failure_pattern(seed=42)
    assert first == _failure_pattern(seed=42)
    assert 5 < sum(first) < 35
    assert first != _failure_pattern(seed=43)


def test_added_latency_trips_a_short_deadline(model_server, stub) -> None:
    model_server.faults.configure(latency_ms=1500)
    with pytest.raises(grpc.RpcError) as exc:
        stub.ModelInfer(_request("token-counter", [b"a"]), timeout=0.2)
    assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    model_server.faults.configure(latency_ms=20)
    assert stub.ModelInfer(_request("token-counter", [b"a"]), timeout=10).outputs


def test_hang_holds_calls_until_deadline_and_releases_them_when_cleared(model_server, stub) -> None:
    model_server.faults.configure(hang=True)
    with pytest.raises(grpc.RpcError) as exc:
        stub.ModelInfer(_request("token-counter", [b"a"]), timeout=0.3)
    assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    result: dict[str, object] = {}

    def call() -> None:
        result["resp"] = stub.ModelInfer(_request("token-counter", [b"a b"]), timeout=30)

    worker = threading.Thread(target=call)
    worker.start()
    # Wait until the second call is actually parked in the hang before releasing it.
    for _ in range(200):
        if model_server.faults.hung_calls >= 2:
            break
        threading.Event().wait(0.025)
    assert model_server.faults.hung_calls >= 2
    model_server.faults.configure(hang=False)
    worker.join(timeout=10)
    assert list(result["resp"].outputs[0].contents.int64_contents) == [2]  # type: ignore[union-attr]


def test_command_line_starts_a_real_process_with_fault_flags() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelserver",
            "--port",
            "0",
            "--error-rate",
            "1",
            "--error-code",
            "FAILED_PRECONDITION",
            "--log-level",
            "WARNING",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("modelserver listening on 127.0.0.1:")
        address = line.rsplit(" ", 1)[1].strip()
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
            with pytest.raises(grpc.RpcError) as exc:
                stub.ModelInfer(_request("token-counter", [b"a"]), timeout=10)
            assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0
