"""Encode text records into KServe V2 requests and decode responses into per-record outputs."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelserver.protocol import pb

__all__ = ["DecodedResponse", "build_infer_request", "decode_infer_response", "set_parameter"]

# Raw little-endian layouts of fixed-size datatypes (struct format characters).
_RAW_FORMATS = {
    "BOOL": "?",
    "INT8": "b",
    "INT16": "h",
    "INT32": "i",
    "INT64": "q",
    "UINT8": "B",
    "UINT16": "H",
    "UINT32": "I",
    "UINT64": "Q",
    "FP16": "e",
    "FP32": "f",
    "FP64": "d",
}
_CONTENT_FIELDS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


class ResponseFormatError(ValueError):
    """The server answered OK but with tensors we cannot map back to records."""


def set_parameter(param: pb.InferParameter, value: Any) -> None:
    """Store a Python value in an InferParameter; floats and structures travel as strings."""
    if isinstance(value, bool):  # before int: bool is an int subclass
        param.bool_param = value
    elif isinstance(value, int):
        param.int64_param = value
    elif isinstance(value, str):
        param.string_param = value
    elif isinstance(value, float):
        # The V2 spec has no double parameter; repr round-trips exactly.
        param.string_param = repr(value)
    else:
        param.string_param = json.dumps(value, ensure_ascii=False, sort_keys=True)


def build_infer_request(
    *,
    model_name: str,
    model_version: str,
    input_name: str,
    texts: Sequence[str],
    parameters: Mapping[str, Any],
    outputs: Sequence[str] = (),
    raw: bool = False,
    request_id: str = "",
) -> pb.ModelInferRequest:
    """One BYTES tensor of shape [N], one UTF-8 record per element."""
    req = pb.ModelInferRequest(model_name=model_name, model_version=model_version, id=request_id)
    for name, value in parameters.items():
        set_parameter(req.parameters[name], value)
    encoded = [t.encode("utf-8") for t in texts]
    tensor = req.inputs.add(name=input_name, datatype="BYTES", shape=[len(encoded)])
    if raw:
        req.raw_input_contents.append(b"".join(struct.pack("<I", len(b)) + b for b in encoded))
    else:
        tensor.contents.bytes_contents.extend(encoded)
    for name in outputs:
        req.outputs.add(name=name)
    return req


def _raw_values(datatype: str, raw: bytes) -> list[Any]:
    """Decode a raw tensor buffer."""
    if datatype == "BYTES":
        out, pos = [], 0
        while pos < len(raw):
            (n,) = struct.unpack_from("<I", raw, pos)
            out.append(raw[pos + 4 : pos + 4 + n])
            pos += 4 + n
        return out
    fmt = _RAW_FORMATS.get(datatype)
    if fmt is None:
        raise ResponseFormatError(f"unsupported datatype {datatype}")
    size = struct.calcsize(fmt)
    return list(struct.unpack(f"<{len(raw) // size}{fmt}", raw))


def _param_value(p: pb.InferParameter) -> Any:
    """Unwrap an InferParameter oneof."""
    kind = p.WhichOneof("parameter_choice")
    return getattr(p, kind) if kind else None


def _as_int(value: Any) -> int | None:
    """Token counts may arrive as int64 or (from servers that only send strings) as digits."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


@dataclass
class DecodedResponse:
    """Per-record outputs, outputs not shaped per record, and reported token usage."""

    records: list[dict[str, Any]]
    batch_outputs: dict[str, Any] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_reported: bool = False
    model_name: str = ""
    model_version: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


def decode_infer_response(resp: pb.ModelInferResponse, n_records: int) -> DecodedResponse:
    """Split each output tensor whose first dimension is N into one value per record."""
    records: list[dict[str, Any]] = [{} for _ in range(n_records)]
    batch: dict[str, Any] = {}
    if resp.raw_output_contents and len(resp.raw_output_contents) != len(resp.outputs):
        raise ResponseFormatError("raw_output_contents does not match outputs")
    for i, out in enumerate(resp.outputs):
        if resp.raw_output_contents:
            values = _raw_values(out.datatype, resp.raw_output_contents[i])
        else:
            field_name = _CONTENT_FIELDS.get(out.datatype)
            if field_name is None:
                raise ResponseFormatError(f"output {out.name}: unsupported datatype {out.datatype}")
            values = list(getattr(out.contents, field_name))
        if out.datatype == "BYTES":
            values = [v.decode("utf-8", errors="replace") for v in values]
        shape = list(out.shape)
        if shape and shape[0] == n_records and n_records and len(values) % n_records == 0:
            per = len(values) // n_records
            for r in range(n_records):
                records[r][out.name] = values[r] if per == 1 else values[r * per : (r + 1) * per]
        else:
            batch[out.name] = values
    params = {k: _param_value(v) for k, v in resp.parameters.items()}
    prompt = _as_int(params.get("prompt_tokens"))
    completion = _as_int(params.get("completion_tokens"))
    return DecodedResponse(
        records=records,
        batch_outputs=batch,
        prompt_tokens=prompt or 0,
        completion_tokens=completion or 0,
        usage_reported=prompt is not None or completion is not None,
        model_name=resp.model_name,
        model_version=resp.model_version,
        parameters=params,
    )
