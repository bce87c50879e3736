"""Fault injection for tests and demos: added latency, error rate and code, hang, poison marker."""

from __future__ import annotations

import dataclasses
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

__all__ = ["FaultInjector", "FaultSettings"]


@dataclass(frozen=True)
class FaultSettings:
    """What to inject; frozen so a call sees one consistent snapshot."""

    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    error_rate: float = 0.0
    error_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    hang: bool = False
    # Records containing this string are rejected with INVALID_ARGUMENT (None = off).
    poison_marker: str | None = None
    # None draws from OS entropy; an int makes the error/jitter sequence reproducible.
    seed: int | None = None
    methods: frozenset[str] = field(default_factory=lambda: frozenset({"ModelInfer"}))
    # The HTTP face sends `Retry-After: <seconds>` with injected errors when set (gRPC has no such header).
    retry_after_s: float | None = None

    def __post_init__(self) -> None:
        """Refuse settings that cannot mean anything rather than ignoring them."""
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"error_rate must be in [0, 1], got {self.error_rate}")
        if self.latency_ms < 0 or self.latency_jitter_ms < 0:
            raise ValueError("latency must be >= 0")
        if self.retry_after_s is not None and self.retry_after_s < 0:
            raise ValueError("retry_after_s must be >= 0")
        if self.error_code == grpc.StatusCode.OK:
            raise ValueError("error_code must not be OK")


class FaultInjector:
    """Thread-safe, runtime-adjustable faults shared by all handler threads of one server."""

    def __init__(self, settings: FaultSettings | None = None) -> None:
        """Start with the given settings (no faults by default)."""
        self._cond = threading.Condition()
        self._settings = settings or FaultSettings()
        self._rng = random.Random(self._settings.seed)
        self.calls = 0
        self.injected_errors = 0
        self.hung_calls = 0

    @property
    def settings(self) -> FaultSettings:
        """The current settings snapshot."""
        return self._settings

    def configure(self, **changes: object) -> FaultSettings:
        """Change some settings; hung and sleeping calls re-check at once."""
        with self._cond:
            new = dataclasses.replace(self._settings, **changes)  # type: ignore[arg-type]
            if "seed" in changes:
                self._rng = random.Random(new.seed)
            self._settings = new
            self._cond.notify_all()
            return new

    def reset(self) -> None:
        """Remove every fault and zero the counters."""
        with self._cond:
            self._settings = FaultSettings()
            self._rng = random.Random()
            self.calls = self.injected_errors = self.hung_calls = 0
            self._cond.notify_all()

    def apply(self, method: str, context: grpc.ServicerContext) -> None:
        """Inject the configured faults into one RPC; aborts the RPC when an error is drawn."""
        code = self.inject(method, context.is_active)
        if code == "gone":
            # The client is gone; nothing will read a response.
            context.abort(grpc.StatusCode.CANCELLED, "client went away while hung")
        if code is not None:
            context.abort(code, f"injected fault ({code.name})")

    def inject(self, method: str, is_active: Callable[[], bool]) -> grpc.StatusCode | str | None:
        """Sleep or hang as configured; the status code to fail with, "gone" if the client left, or None.

        Shared by the gRPC servicer and the OpenAI-compatible HTTP face (which maps the code to HTTP).
        """
        with self._cond:
            s = self._settings
            if method not in s.methods:
                return None
            self.calls += 1
            # Draw under the lock so a seeded run yields the same sequence whatever the
            # thread interleaving (the i-th call to arrive gets the i-th draw).
            fail = s.error_rate > 0 and self._rng.random() < s.error_rate
            jitter = self._rng.uniform(0, s.latency_jitter_ms) if s.latency_jitter_ms else 0.0
            delay = (s.latency_ms + jitter) / 1000.0
            if s.hang:
                self.hung_calls += 1
                # Wait until someone clears hang or the client gives up (deadline/cancel);
                # polling is_active bounds how long a handler thread stays pinned.
                while self._settings.hang and is_active():
                    self._cond.wait(0.05)
                if not is_active():
                    return "gone"
            if delay:
                self._cond.wait_for(lambda: not is_active(), timeout=delay)
            if fail:
                self.injected_errors += 1
        return s.error_code if fail else None
