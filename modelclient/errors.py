"""Model-call errors, classified at the client edge: transient, permanent, breaker open."""

from __future__ import annotations

from typing import Any

import grpc

__all__ = [
    "PERMANENT_CODES",
    "RETRYABLE_CODES",
    "BreakerOpen",
    "EndpointRefused",
    "EndpointUnresolved",
    "InFlightLimitTimeout",
    "ModelError",
    "PermanentModelError",
    "TransientModelError",
    "classify",
]

# Retried inside one call (with backoff): the request never ran or the server shed it.
RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
# The same request will fail the same way: quarantine records or fix the config, never retry.
PERMANENT_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.DATA_LOSS,
    }
)


class ModelError(Exception):
    """A model call that did not produce a result."""

    def __init__(self, message: str, *, code: str | None = None, model: str = "", attempts: int = 0) -> None:
        """Keep the gRPC status name, the model key and how many attempts were made."""
        super().__init__(message)
        self.message = message
        self.code = code
        self.model = model
        self.attempts = attempts
        # CallStats of the failed call, attached by ModelClient.infer_texts.
        self.stats: Any = None

    def __str__(self) -> str:
        """Status code first: it is what operators grep for."""
        prefix = f"{self.code}: " if self.code else ""
        return f"{prefix}{self.message}"


class TransientModelError(ModelError):
    """Worth trying again later (the batch, not this call): the server was unwell."""


class PermanentModelError(ModelError):
    """The request itself is wrong; retrying cannot help."""

    def __init__(self, message: str, *, message_too_large: bool = False, **kw: object) -> None:
        """`message_too_large` tells the caller to split the batch rather than quarantine it."""
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.message_too_large = message_too_large


class EndpointRefused(PermanentModelError):
    """The channel pool's resolver refused the endpoint's address (SSRF guard): nothing was dialled."""

    def __init__(self, message: str, **kw: object) -> None:
        """Code ENDPOINT_REFUSED unless told otherwise."""
        kw.setdefault("code", "ENDPOINT_REFUSED")
        super().__init__(message, **kw)


class EndpointUnresolved(TransientModelError):
    """The endpoint's name does not resolve now; like gRPC's own DNS failure, UNAVAILABLE."""

    def __init__(self, message: str, **kw: object) -> None:
        """Code UNAVAILABLE unless told otherwise."""
        kw.setdefault("code", "UNAVAILABLE")
        super().__init__(message, **kw)  # type: ignore[arg-type]


class InFlightLimitTimeout(TransientModelError):
    """No in-flight slot for this model config freed up within the call's deadline."""


class BreakerOpen(ModelError):
    """The circuit breaker refuses calls; wait `retry_after` seconds (the stage should wait)."""

    def __init__(self, model: str, retry_after: float, state: str = "open") -> None:
        """Say which breaker and for how long."""
        super().__init__(
            f"circuit breaker {state} for {model}; retry after {retry_after:.1f}s",
            code="BREAKER_OPEN",
            model=model,
        )
        self.retry_after = max(0.0, retry_after)
        self.state = state


def is_message_too_large(code: grpc.StatusCode, details: str) -> bool:
    """gRPC reports an oversized message as RESOURCE_EXHAUSTED; it is not load shedding."""
    return code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in (details or "")


def classify(code: grpc.StatusCode, details: str) -> str:
    """Return "retry", "permanent" or "transient" for a failed attempt."""
    if is_message_too_large(code, details):
        return "permanent"
    if code in RETRYABLE_CODES:
        return "retry"
    if code in PERMANENT_CODES:
        return "permanent"
    # DEADLINE_EXCEEDED, INTERNAL, UNKNOWN, ABORTED, CANCELLED: the server may be sick or
    # the work may have run; not retried here, left to the caller's bounded batch retry.
    return "transient"
