"""KServe V2 model client for DataFlare (pure Python, no Django): see docs/grpc.md."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from .breaker import (
    BreakerSnapshot,
    BreakerStore,
    CircuitBreaker,
    InMemoryBreakerStore,
    RedisBreakerStore,
    SqliteBreakerStore,
)
from .client import CallStats, HealthReport, InferResult, IsolatedResult, ModelClient
from .config import BreakerPolicy, ModelEndpoint, RetryPolicy, TlsConfig
from .errors import (
    BreakerOpen,
    EndpointRefused,
    EndpointUnresolved,
    InFlightLimitTimeout,
    ModelError,
    PermanentModelError,
    TransientModelError,
)

__all__ = [
    "BreakerOpen",
    "BreakerPolicy",
    "BreakerSnapshot",
    "BreakerStore",
    "CallStats",
    "CircuitBreaker",
    "EndpointRefused",
    "EndpointUnresolved",
    "HealthReport",
    "InFlightLimitTimeout",
    "InMemoryBreakerStore",
    "InferResult",
    "IsolatedResult",
    "ModelClient",
    "ModelEndpoint",
    "ModelError",
    "PermanentModelError",
    "RedisBreakerStore",
    "RetryPolicy",
    "SqliteBreakerStore",
    "TlsConfig",
    "TransientModelError",
    "check_health",
    "configure",
    "default_client",
    "infer_texts",
    "infer_texts_isolating",
]

_lock = threading.Lock()
_default: ModelClient | None = None


def configure(*, breaker_store: BreakerStore | None = None) -> ModelClient:
    """Replace the process-wide client (e.g. with a RedisBreakerStore at worker start)."""
    global _default
    with _lock:
        _default = ModelClient(breaker_store=breaker_store)
        return _default


def default_client() -> ModelClient:
    """The process-wide client (in-memory breaker until `configure` is called)."""
    global _default
    with _lock:
        if _default is None:
            _default = ModelClient()
        return _default


def infer_texts(
    config: ModelEndpoint, texts: Sequence[str], parameters: Mapping[str, Any] | None = None
) -> InferResult:
    """Call the model once for a batch of records using the process-wide client."""
    return default_client().infer_texts(config, texts, parameters)


def infer_texts_isolating(
    config: ModelEndpoint, texts: Sequence[str], parameters: Mapping[str, Any] | None = None
) -> IsolatedResult:
    """Like infer_texts, quarantining INVALID_ARGUMENT records by bisection."""
    return default_client().infer_texts_isolating(config, texts, parameters)


def check_health(config: ModelEndpoint) -> HealthReport:
    """Liveness, readiness and metadata of the endpoint and model."""
    return default_client().check_health(config)
