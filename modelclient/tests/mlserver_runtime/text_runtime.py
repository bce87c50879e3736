"""A Seldon MLServer runtime that counts and echoes text, to test modelclient against MLServer.

It runs inside MLServer's own virtualenv (see docs/grpc.md); it imports only the pure-Python
tokenizer from modelserver.text so token counts match the reference server's.
"""

from __future__ import annotations

from mlserver import MLModel
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse, Parameters, ResponseOutput

from modelserver.text import count_tokens


class TextEcho(MLModel):
    """Outputs per record: token_count (INT64) and echo (BYTES, upper-cased)."""

    async def load(self) -> bool:
        """Nothing to load."""
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        """Decode BYTES records, reject poison, count tokens, report usage in parameters."""
        (tensor,) = payload.inputs
        marker = getattr(payload.parameters, "poison_marker", None) if payload.parameters else None
        texts = []
        for i, item in enumerate(tensor.data.root if hasattr(tensor.data, "root") else tensor.data):
            try:
                text = item.decode("utf-8") if isinstance(item, bytes) else str(item)
            except UnicodeDecodeError:
                raise InferenceError(f"record {i} is not valid UTF-8") from None
            if marker and marker in text:
                # InferenceError maps to HTTP 400, which MLServer sends as INVALID_ARGUMENT.
                raise InferenceError(f"record {i} contains the poison marker {marker!r}")
            texts.append(text)
        counts = [count_tokens(t) for t in texts]
        echoes = [t.upper() for t in texts]
        n = len(texts)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[
                ResponseOutput(name="token_count", datatype="INT64", shape=[n], data=counts),
                ResponseOutput(name="echo", datatype="BYTES", shape=[n], data=[e.encode() for e in echoes]),
            ],
            parameters=Parameters(
                prompt_tokens=sum(counts),
                completion_tokens=sum(count_tokens(e) for e in echoes),
            ),
        )
