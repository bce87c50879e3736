"""Plain configuration objects for a model endpoint; the portal builds them from ModelConfig rows."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["OPENAI_APIS", "PROTOCOLS", "BreakerPolicy", "ModelEndpoint", "RetryPolicy", "TlsConfig"]

# Wire protocols a model endpoint may speak: KServe V2 over gRPC, or the OpenAI-compatible HTTP API.
KSERVE_V2 = "kserve_v2"
OPENAI = "openai"
PROTOCOLS = (KSERVE_V2, OPENAI)
# The OpenAI-compatible APIs a model config calls (POST {base}/chat/completions, /completions, /embeddings).
OPENAI_APIS = ("chat", "completions", "embeddings")


@dataclass(frozen=True)
class TlsConfig:
    """TLS to the model server; no root certs means the system trust store."""

    root_certs: bytes | None = None
    client_cert: bytes | None = None
    client_key: bytes | None = None
    # Override the name checked against the server certificate (e.g. when dialling an IP).
    server_name: str | None = None

    def __post_init__(self) -> None:
        """A client certificate without its key (or the reverse) is a configuration error."""
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together")

    @classmethod
    def from_files(
        cls,
        root_certs: str | Path | None = None,
        client_cert: str | Path | None = None,
        client_key: str | Path | None = None,
        server_name: str | None = None,
    ) -> TlsConfig:
        """Read PEM files."""

        def read(p: str | Path | None) -> bytes | None:
            return Path(p).read_bytes() if p else None

        return cls(read(root_certs), read(client_cert), read(client_key), server_name)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and full jitter."""

    max_attempts: int = 4
    backoff_base_s: float = 0.05
    backoff_max_s: float = 2.0
    # RESOURCE_EXHAUSTED means "you are sending too much": back off harder than for UNAVAILABLE.
    resource_exhausted_factor: float = 4.0

    def __post_init__(self) -> None:
        """At least one attempt; non-negative delays."""
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.backoff_base_s < 0 or self.backoff_max_s < 0:
            raise ValueError("backoff must be >= 0")


@dataclass(frozen=True)
class BreakerPolicy:
    """Open after `failure_threshold` consecutive failed calls; probe after `reset_timeout_s`."""

    failure_threshold: int = 5
    reset_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        """A zero threshold would open on success."""
        if self.failure_threshold < 1 or self.reset_timeout_s < 0:
            raise ValueError("failure_threshold must be >= 1 and reset_timeout_s >= 0")


@dataclass(frozen=True)
class ModelEndpoint:
    """Everything needed to call one model on one KServe V2 or OpenAI-compatible endpoint.

    Args:
        endpoint: "host:port" of the gRPC server, or the base URL of an OpenAI-compatible API
            ("https://llm.example.com/v1").
        model_name: model to call.
        model_version: version, or "" to let the server choose.
        input_name: name of the BYTES input tensor carrying the records.
        parameters: default request parameters, merged under the per-call ones.
        deadline_s: per-attempt deadline; every RPC carries one.
        retry: retry policy.
        max_in_flight: concurrent calls allowed per process for this endpoint+model.
        breaker: circuit breaker thresholds.
        tls: TLS settings, or None for plaintext.
        max_message_bytes: gRPC send/receive limit.
        raw_contents: send records as raw_input_contents (Triton's preferred form).
        key: identity for the breaker and the in-flight bound; derived when empty.
        config_id: the portal's model config id; the channel pool keeps at most one channel per
            id and closes it when the config changes or is discarded ("" for ad-hoc endpoints).
        protocol: "kserve_v2" (gRPC) or "openai" (HTTP).
        openai_api: with protocol "openai": "chat", "completions" or "embeddings".
        api_key: bearer token for the OpenAI-compatible API (never in repr, logs or fingerprints).
    """

    endpoint: str
    model_name: str
    model_version: str = ""
    input_name: str = "text"
    parameters: Mapping[str, Any] = field(default_factory=dict)
    deadline_s: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_in_flight: int = 8
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    tls: TlsConfig | None = None
    max_message_bytes: int = 64 * 1024 * 1024
    raw_contents: bool = False
    key: str = ""
    config_id: str = ""
    protocol: str = KSERVE_V2
    openai_api: str = "chat"
    api_key: str = field(default="", repr=False, compare=False)

    def __post_init__(self) -> None:
        """Fail loudly on values that would make calls hang or never run."""
        if not self.endpoint or not self.model_name:
            raise ValueError("endpoint and model_name are required")
        if self.deadline_s <= 0:
            raise ValueError("deadline_s must be > 0: every call needs a deadline")
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.protocol == OPENAI and self.openai_api not in OPENAI_APIS:
            raise ValueError(f"openai_api must be one of {OPENAI_APIS}, got {self.openai_api!r}")
        if not self.key:
            version = self.model_version or "*"
            api = f"{self.openai_api}/" if self.protocol == OPENAI else ""
            object.__setattr__(self, "key", f"{self.endpoint}/{api}{self.model_name}@{version}")

    @property
    def one_record_per_request(self) -> bool:
        """Chat completions take one conversation per request; the other APIs take a list of records."""
        return self.protocol == OPENAI and self.openai_api == "chat"
