"""Tensor encoding both ways, including the raw forms Triton and MLServer may use."""

from __future__ import annotations

import struct

import pytest

from modelclient.codec import (
    ResponseFormatError,
    build_infer_request,
    decode_infer_response,
    set_parameter,
)
from modelserver.protocol import pb


def test_parameters_map_to_kserve_types_and_floats_travel_as_strings() -> None:
    p = pb.InferParameter()
    cases = [
        (True, "bool_param", True),
        (7, "int64_param", 7),
        ("x", "string_param", "x"),
        (0.7, "string_param", "0.7"),
        ({"a": [1]}, "string_param", '{"a": [1]}'),
    ]
    for value, kind, expected in cases:
        set_parameter(p, value)
        assert p.WhichOneof("parameter_choice") == kind
        assert getattr(p, kind) == expected


@pytest.mark.parametrize("raw", [False, True])
def test_requests_carry_one_utf8_record_per_element(raw: bool) -> None:
    req = build_infer_request(
        model_name="m",
        model_version="2",
        input_name="text",
        texts=["a", "数据"],
        parameters={"max_tokens": 3},
        raw=raw,
    )
    (tensor,) = req.inputs
    assert (tensor.name, tensor.datatype, list(tensor.shape)) == ("text", "BYTES", [2])
    if raw:
        assert req.raw_input_contents[0] == b"\x01\x00\x00\x00a\x06\x00\x00\x00" + "数据".encode()
        assert not tensor.HasField("contents")
    else:
        assert list(tensor.contents.bytes_contents) == [b"a", "数据".encode()]
    assert req.parameters["max_tokens"].int64_param == 3


def test_raw_outputs_are_decoded_and_split_per_record() -> None:
    resp = pb.ModelInferResponse(model_name="m", model_version="1")
    resp.outputs.add(name="score", datatype="FP32", shape=[2])
    resp.outputs.add(name="pair", datatype="INT64", shape=[2, 2])
    resp.outputs.add(name="label", datatype="BYTES", shape=[2])
    resp.outputs.add(name="total", datatype="INT32", shape=[1])
    resp.raw_output_contents.extend(
        [
            struct.pack("<2f", 0.5, 0.25),
            struct.pack("<4q", 1, 2, 3, 4),
            b"".join(struct.pack("<I", len(b)) + b for b in (b"en", "中".encode())),
            struct.pack("<i", 9),
        ]
    )
    resp.parameters["prompt_tokens"].string_param = "12"  # a server that only sends strings
    decoded = decode_infer_response(resp, 2)
    assert decoded.records == [
        {"score": 0.5, "pair": [1, 2], "label": "en"},
        {"score": 0.25, "pair": [3, 4], "label": "中"},
    ]
    assert decoded.batch_outputs == {"total": [9]}
    assert (decoded.prompt_tokens, decoded.completion_tokens, decoded.usage_reported) == (
        12,
        0,
        True,
    )


def test_missing_usage_is_reported_as_missing_not_as_zero_work() -> None:
    resp = pb.ModelInferResponse()
    resp.outputs.add(name="x", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"y")
    decoded = decode_infer_response(resp, 1)
    assert decoded.usage_reported is False
    assert decoded.records == [{"x": "y"}]


def test_unknown_datatypes_are_a_format_error() -> None:
    resp = pb.ModelInferResponse()
    resp.outputs.add(name="x", datatype="COMPLEX128", shape=[1])
    with pytest.raises(ResponseFormatError):
        decode_infer_response(resp, 1)
