"""Resilient KServe V2 client: deadlines, bounded retries, in-flight bounds, circuit breaker."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

from modelserver.protocol import pb, pb_grpc

from .breaker import OPEN, BreakerStore, CircuitBreaker, ClosedStateCache, InMemoryBreakerStore
from .channels import ChannelPool, default_pool
from .codec import ResponseFormatError, build_infer_request, decode_infer_response
from .config import OPENAI, ModelEndpoint
from .errors import (
    BreakerOpen,
    EndpointRefused,
    EndpointUnresolved,
    InFlightLimitTimeout,
    ModelError,
    PermanentModelError,
    TransientModelError,
    classify,
    is_message_too_large,
)
from .openai_http import (
    PATHS,
    AttemptFailed,
    HttpPool,
    ResponseShapeError,
    build_openai_body,
    decode_openai_response,
    default_http_pool,
    openai_request,
)

__all__ = [
    "CallStats",
    "HealthReport",
    "InferResult",
    "IsolatedResult",
    "ModelClient",
]

T = TypeVar("T")
# How long the gateway trusts a breaker's closed state without asking the store (ClosedStateCache).
BREAKER_CLOSED_CACHE_S = 0.25


# ---------------------------------------------------------------------------------- results


@dataclass
class CallStats:
    """Outcome counts of the RPC attempts behind one or more logical calls."""

    calls: int = 0
    attempts: int = 0
    status_counts: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    backoff_s: float = 0.0
    # Per status code: attempt latencies, and records carried by those attempts (usage metrics).
    latencies_by_code: dict[str, list[float]] = field(default_factory=dict)
    records_by_code: Counter[str] = field(default_factory=Counter)

    def record(self, code: str, latency_s: float) -> None:
        """Count one RPC attempt."""
        self.attempts += 1
        self.status_counts[code] += 1
        self.latencies_s.append(latency_s)
        self.latencies_by_code.setdefault(code, []).append(latency_s)

    def count_records(self, n_records: int) -> None:
        """Every attempt so far carried `n_records` records (one logical call's stats)."""
        for code, attempts in self.status_counts.items():
            self.records_by_code[code] = attempts * n_records

    def merge(self, other: CallStats) -> None:
        """Add another call's counts into this one."""
        self.calls += other.calls
        self.attempts += other.attempts
        self.status_counts.update(other.status_counts)
        self.latencies_s.extend(other.latencies_s)
        self.backoff_s += other.backoff_s
        for code, values in other.latencies_by_code.items():
            self.latencies_by_code.setdefault(code, []).extend(values)
        self.records_by_code.update(other.records_by_code)

    @property
    def latency_total_s(self) -> float:
        """Time spent waiting on RPCs (excluding backoff sleeps)."""
        return sum(self.latencies_s)


@dataclass
class InferResult:
    """Per-record outputs of one logical call plus token usage and call stats."""

    outputs: list[dict[str, Any]]
    prompt_tokens: int
    completion_tokens: int
    usage_reported: bool
    model_name: str
    model_version: str
    stats: CallStats
    batch_outputs: dict[str, Any] = field(default_factory=dict)


@dataclass
class IsolatedResult:
    """Outputs aligned with the input (None where quarantined) and the quarantine reasons."""

    outputs: list[dict[str, Any] | None]
    quarantined: dict[int, str]
    prompt_tokens: int
    completion_tokens: int
    model_name: str
    model_version: str
    stats: CallStats
    calls: int

    @property
    def succeeded(self) -> int:
        """Records that got outputs."""
        return sum(1 for o in self.outputs if o is not None)


@dataclass
class HealthReport:
    """What the model config "test" action shows."""

    live: bool
    ready: bool
    model_ready: bool
    latency_ms: float
    server: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    error: str = ""


# ----------------------------------------------------------------------------------- client


class ModelClient:
    """Calls KServe V2 (gRPC) and OpenAI-compatible (HTTP) models with the resilience rules of docs/grpc.md.

    One instance per process is the norm (see `modelclient.default_client`): it owns the
    in-flight semaphores, and its channel pool, HTTP pool and breaker store are shared by all calls.
    The protocol is the endpoint's (`ModelEndpoint.protocol`); callers use the same methods for both.
    """

    def __init__(
        self,
        *,
        breaker_store: BreakerStore | None = None,
        channel_pool: ChannelPool | None = None,
        http_pool: HttpPool | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        """Build a client.

        Args:
            breaker_store: where breaker state lives; RedisBreakerStore shares it across
                workers. Defaults to a per-client in-memory store.
            channel_pool: channel cache; the process-wide pool by default.
            http_pool: pinned HTTP clients of OpenAI-compatible endpoints; the process-wide pool by default.
            sleep: backoff sleep (injectable to observe delays).
            rng: jitter source.
        """
        self.breaker_store = breaker_store or InMemoryBreakerStore()
        self.channels = channel_pool or default_pool()
        self.http = http_pool or default_http_pool()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._semaphores: dict[tuple[str, int], threading.BoundedSemaphore] = {}
        self._closed_cache: ClosedStateCache | None = None

    # -- plumbing

    def breaker(self, config: ModelEndpoint, *, cached: bool = False) -> CircuitBreaker:
        """The breaker of this endpoint+model (state in the shared store).

        `cached`: through this client's `ClosedStateCache` (the gateway's event loop, where a store round trip
        blocks every other request); pipeline calls, on their own threads, ask the store every time.
        """
        retry = config.retry
        # A probe's trial slot must outlast the probe itself: every attempt plus backoff.
        probe_timeout = retry.max_attempts * (config.deadline_s + retry.backoff_max_s)
        store = self.breaker_store
        if cached:
            if self._closed_cache is None or self._closed_cache.store is not store:
                self._closed_cache = ClosedStateCache(store, BREAKER_CLOSED_CACHE_S)
            store = self._closed_cache
        return CircuitBreaker(config.key, store, config.breaker, probe_timeout)

    def _semaphore(self, config: ModelEndpoint) -> threading.BoundedSemaphore:
        """Per-process bound on concurrent calls to one endpoint+model."""
        k = (config.key, config.max_in_flight)
        with self._lock:
            sem = self._semaphores.get(k)
            if sem is None:
                sem = self._semaphores[k] = threading.BoundedSemaphore(config.max_in_flight)
            return sem

    def _stub(self, config: ModelEndpoint) -> Any:
        """What one attempt talks to: a gRPC stub over the pooled channel, or the pinned HTTP client.

        Either way the endpoint's host has been resolved and checked by the pool's resolver.
        """
        if config.protocol == OPENAI:
            return self.http.get(config)[0]
        return pb_grpc.GRPCInferenceServiceStub(self.channels.get(config))

    def _invalidate(self, config: ModelEndpoint) -> None:
        """Resolve and check the name again before the next connection (the last one failed)."""
        if config.protocol == OPENAI:
            self.http.invalidate(config)
        else:
            self.channels.invalidate(config)

    def _backoff(self, config: ModelEndpoint, attempt: int, code: str) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2^(attempt-1) * factor)]."""
        r = config.retry
        factor = r.resource_exhausted_factor if code == "RESOURCE_EXHAUSTED" else 1
        return self._rng.uniform(0, min(r.backoff_max_s, r.backoff_base_s * factor * 2 ** (attempt - 1)))

    def _call(
        self,
        config: ModelEndpoint,
        rpc: Callable[[Any, float], T],
        stats: CallStats,
    ) -> T:
        """Run one logical call under the breaker, the in-flight bound and the retry policy.

        Args:
            config: endpoint and policies.
            rpc: performs one attempt given a stub (gRPC) or client (HTTP) and a timeout in seconds;
                raises grpc.RpcError or AttemptFailed when it fails.
            stats: receives one entry per attempt.

        Returns:
            The RPC's response.

        Raises:
            BreakerOpen: the breaker refused the call (before or between attempts).
            PermanentModelError: the server rejected the request; do not retry it.
            TransientModelError: retries exhausted, deadline exceeded or the server broke.
        """
        # The pool resolves and checks the endpoint (SSRF guard) before the breaker is asked: a refused
        # address is the config's fault, not the server's, and must not take the breaker's probe slot.
        unresolved: EndpointUnresolved | None = None
        try:
            stub: Any = self._stub(config)
        except EndpointRefused as e:
            e.model, e.attempts = config.key, 0
            raise
        except EndpointUnresolved as e:
            stub, unresolved = None, e
        breaker = self.breaker(config)
        breaker.before_call()
        stats.calls += 1
        sem = self._semaphore(config)
        max_attempts = config.retry.max_attempts
        for attempt in range(1, max_attempts + 1):
            if attempt > 1:
                snap = breaker.snapshot()
                if snap.state == OPEN:
                    # Other workers opened it while we backed off: stop adding load.
                    raise BreakerOpen(config.key, snap.retry_after, snap.state)
            try:
                if unresolved is not None:
                    # The first attempt fails with the answer just given, not with a second lookup.
                    raise unresolved
                # After a failed connection the pool resolves and checks the name again.
                stub = stub or self._stub(config)
            except EndpointRefused as e:
                breaker.record_failure()
                e.model, e.attempts = config.key, attempt - 1
                raise
            except EndpointUnresolved as e:
                unresolved = None
                code, details, kind, retry_after, too_large = "UNAVAILABLE", e.message, "retry", None, False
                stats.record(code, 0.0)
            else:
                # Waiting for a slot counts against the same deadline a call would have.
                if not sem.acquire(timeout=config.deadline_s):
                    raise InFlightLimitTimeout(
                        f"no in-flight slot within {config.deadline_s}s (max_in_flight={config.max_in_flight})",
                        code="IN_FLIGHT_LIMIT",
                        model=config.key,
                        attempts=attempt - 1,
                    )
                started = time.perf_counter()
                try:
                    response = rpc(stub, config.deadline_s)
                except grpc.RpcError as e:
                    status, details = e.code(), e.details() or ""
                    code, kind, retry_after = status.name, classify(status, details), None
                    too_large = is_message_too_large(status, details)
                    stats.record(code, time.perf_counter() - started)
                except AttemptFailed as e:
                    code, details, kind, retry_after, too_large = e.code, e.details, e.kind, e.retry_after, e.too_large
                    stats.record(code, time.perf_counter() - started)
                except EndpointRefused as e:
                    # An HTTP connection re-checked the name and the guard refused the new answer.
                    breaker.record_failure()
                    e.model, e.attempts = config.key, attempt
                    raise
                else:
                    stats.record("OK", time.perf_counter() - started)
                    breaker.record_success()
                    return response
                finally:
                    sem.release()
                if code == "UNAVAILABLE":
                    self._invalidate(config)
                    stub = None
            err_kw = {"code": code, "model": config.key, "attempts": attempt}
            if kind == "permanent":
                # The server is up and answering: that is a success as far as the breaker goes.
                breaker.record_success()
                raise PermanentModelError(details, message_too_large=too_large, **err_kw)
            if kind == "retry" and attempt < max_attempts:
                delay = self._backoff(config, attempt, code)
                if retry_after is not None:
                    # The server said when to come back (Retry-After): never sooner. A wait longer than an attempt
                    # may last ends the call instead; the engine retries the batch later under its own budget.
                    limit = max(config.retry.backoff_max_s, config.deadline_s)
                    if retry_after > limit:
                        breaker.record_failure()
                        raise TransientModelError(
                            f"server asked to retry after {retry_after:g}s (more than {limit:g}s): {details}",
                            **err_kw,
                        )
                    delay = max(delay, retry_after)
                stats.backoff_s += delay
                self._sleep(delay)
                continue
            # Out of attempts, or DEADLINE_EXCEEDED / INTERNAL / UNKNOWN: one failure for the
            # breaker per logical call, so a 30% error rate that retries absorb never opens it.
            breaker.record_failure()
            if kind == "retry":
                details = f"gave up after {attempt} attempts: {details}"
            raise TransientModelError(details, **err_kw)
        raise AssertionError("unreachable: the loop returns or raises")

    # -- inference

    def infer_texts(
        self,
        config: ModelEndpoint,
        texts: Sequence[str],
        parameters: Mapping[str, Any] | None = None,
        *,
        outputs: Sequence[str] = (),
        request_id: str = "",
    ) -> InferResult:
        """Send a batch of text records in one ModelInfer call (with retries).

        Args:
            config: endpoint, model and policies.
            texts: one record per element of the BYTES input tensor.
            parameters: request parameters, over config.parameters.
            outputs: output names to request; empty means all.
            request_id: echoed by the server; useful in server logs.

        Returns:
            InferResult with one dict of outputs per record.

        Raises:
            BreakerOpen, PermanentModelError, TransientModelError.
        """
        if not texts:
            return InferResult([], 0, 0, False, config.model_name, config.model_version, CallStats())
        params = {**config.parameters, **(parameters or {})}
        if config.protocol == OPENAI:
            return self._infer_openai(config, texts, params)
        request = build_infer_request(
            model_name=config.model_name,
            model_version=config.model_version,
            input_name=config.input_name,
            texts=texts,
            parameters=params,
            outputs=outputs,
            raw=config.raw_contents,
            request_id=request_id,
        )
        stats = CallStats()
        try:
            response = self._call(config, lambda stub, t: stub.ModelInfer(request, timeout=t), stats)
        except ModelError as e:
            # Failed calls still feed the usage/outcome metrics (failures by status code).
            stats.count_records(len(texts))
            e.stats = stats
            raise
        stats.count_records(len(texts))
        try:
            decoded = decode_infer_response(response, len(texts))
        except ResponseFormatError as e:
            raise PermanentModelError(str(e), code="BAD_RESPONSE", model=config.key) from e
        return InferResult(
            outputs=decoded.records,
            prompt_tokens=decoded.prompt_tokens,
            completion_tokens=decoded.completion_tokens,
            usage_reported=decoded.usage_reported,
            model_name=decoded.model_name or config.model_name,
            model_version=decoded.model_version or config.model_version,
            stats=stats,
            batch_outputs=decoded.batch_outputs,
        )

    def _infer_openai(self, config: ModelEndpoint, texts: Sequence[str], params: Mapping[str, Any]) -> InferResult:
        """OpenAI-compatible: one request for the batch (completions, embeddings) or one per record (chat)."""
        if config.one_record_per_request and len(texts) > 1:
            total = InferResult([], 0, 0, True, config.model_name, config.model_version, CallStats())
            for text in texts:
                try:
                    part = self._infer_openai(config, [text], params)
                except ModelError as e:
                    if e.stats is not None:
                        total.stats.merge(e.stats)
                    e.stats = total.stats
                    raise
                total.outputs += part.outputs
                total.prompt_tokens += part.prompt_tokens
                total.completion_tokens += part.completion_tokens
                total.usage_reported = total.usage_reported and part.usage_reported
                total.model_name = part.model_name
                total.stats.merge(part.stats)
            return total
        body = build_openai_body(config, texts, params)
        path = PATHS[config.openai_api]
        stats = CallStats()
        try:
            data = self._call(config, lambda client, t: openai_request(client, config, "POST", path, body, t), stats)
        except ModelError as e:
            stats.count_records(len(texts))
            e.stats = stats
            raise
        stats.count_records(len(texts))
        try:
            decoded = decode_openai_response(config, data, len(texts), params)
        except ResponseShapeError as e:
            raise PermanentModelError(str(e), code="BAD_RESPONSE", model=config.key) from e
        return InferResult(
            outputs=decoded.records,
            prompt_tokens=decoded.prompt_tokens,
            completion_tokens=decoded.completion_tokens,
            usage_reported=decoded.usage_reported,
            model_name=decoded.model_name,
            model_version=config.model_version,
            stats=stats,
        )

    def infer_texts_isolating(
        self,
        config: ModelEndpoint,
        texts: Sequence[str],
        parameters: Mapping[str, Any] | None = None,
        *,
        outputs: Sequence[str] = (),
        max_extra_calls: int | None = None,
    ) -> IsolatedResult:
        """Like infer_texts, but bisect INVALID_ARGUMENT batches to quarantine only bad records.

        A rejected batch is split in halves until each rejected part is a single record,
        which is quarantined with the server's message. Extra calls are bounded by
        `max_extra_calls` (default 8 * bit_length(n) + 8); when the budget runs out, the
        still-unresolved parts are quarantined whole with the original reason.
        Only INVALID_ARGUMENT and OUT_OF_RANGE are blamed on records; other permanent errors
        (NOT_FOUND, UNIMPLEMENTED...) are about the config and are raised as they are.

        Raises:
            BreakerOpen, TransientModelError, PermanentModelError (not record-specific).
        """
        if config.one_record_per_request:
            return self._isolating_per_record(config, texts, parameters)
        n = len(texts)
        # Isolating k bad records costs about 2k*log2(n) calls; the default covers a few bad
        # records per batch and stays logarithmic in the batch size.
        default_budget = 8 * max(1, n).bit_length() + 8
        budget = max_extra_calls if max_extra_calls is not None else default_budget
        result = IsolatedResult([None] * n, {}, 0, 0, config.model_name, config.model_version, CallStats(), 0)
        record_codes = {"INVALID_ARGUMENT", "OUT_OF_RANGE"}
        # Explicit stack, depth-first, left half first: results land in input order.
        pending: list[tuple[int, int, str | None]] = [(0, n, None)]
        while pending:
            lo, hi, parent_reason = pending.pop()
            if lo >= hi:
                continue
            if result.calls >= 1 + budget:
                for i in range(lo, hi):
                    result.quarantined[i] = f"not isolated (call budget spent): {parent_reason}"
                continue
            result.calls += 1
            try:
                part = self.infer_texts(config, texts[lo:hi], parameters, outputs=outputs)
            except ModelError as e:
                if not isinstance(e, PermanentModelError) or e.code not in record_codes or e.message_too_large:
                    # The error carries every attempt of the isolating call, so usage metrics
                    # still see the bisection calls that succeeded before it.
                    if e.stats is not None:
                        result.stats.merge(e.stats)
                    e.stats = result.stats
                    raise
                if e.stats is not None:
                    result.stats.merge(e.stats)
                if hi - lo == 1:
                    result.quarantined[lo] = f"{e.code}: {e.message}"
                    continue
                mid = (lo + hi) // 2
                pending.append((mid, hi, e.message))
                pending.append((lo, mid, e.message))
                continue
            for offset, record in enumerate(part.outputs):
                result.outputs[lo + offset] = record
            result.prompt_tokens += part.prompt_tokens
            result.completion_tokens += part.completion_tokens
            result.model_name, result.model_version = part.model_name, part.model_version
            result.stats.merge(part.stats)
        return result

    def _isolating_per_record(
        self, config: ModelEndpoint, texts: Sequence[str], parameters: Mapping[str, Any] | None
    ) -> IsolatedResult:
        """Each record is its own request (chat): a rejected one is quarantined at once, no bisection needed."""
        n = len(texts)
        result = IsolatedResult([None] * n, {}, 0, 0, config.model_name, config.model_version, CallStats(), 0)
        for i, text in enumerate(texts):
            result.calls += 1
            try:
                part = self.infer_texts(config, [text], parameters)
            except ModelError as e:
                if e.stats is not None:
                    result.stats.merge(e.stats)
                if isinstance(e, PermanentModelError) and e.code in {"INVALID_ARGUMENT", "OUT_OF_RANGE"}:
                    result.quarantined[i] = f"{e.code}: {e.message}"
                    continue
                e.stats = result.stats
                raise
            result.outputs[i] = part.outputs[0]
            result.prompt_tokens += part.prompt_tokens
            result.completion_tokens += part.completion_tokens
            result.model_name, result.model_version = part.model_name, part.model_version
            result.stats.merge(part.stats)
        return result

    # -- health and metadata

    def check_health(self, config: ModelEndpoint) -> HealthReport:
        """ServerLive, ServerReady, ModelReady and metadata in one report (config "test").

        OpenAI-compatible endpoints: GET {base}/models answers (live, ready) and lists the model (model ready).
        """
        if config.protocol == OPENAI:
            return self._check_health_openai(config)
        t = config.deadline_s
        started = time.perf_counter()
        try:
            stub = self._stub(config)
        except ModelError as e:
            # Refused by the pool's resolver (SSRF guard) or unresolvable: nothing was dialled.
            return HealthReport(False, False, False, (time.perf_counter() - started) * 1000, error=str(e))
        try:
            live = stub.ServerLive(pb.ServerLiveRequest(), timeout=t).live
            ready = stub.ServerReady(pb.ServerReadyRequest(), timeout=t).ready
            model_ready = stub.ModelReady(
                pb.ModelReadyRequest(name=config.model_name, version=config.model_version),
                timeout=t,
            ).ready
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                self.channels.invalidate(config)
            return HealthReport(
                False,
                False,
                False,
                (time.perf_counter() - started) * 1000,
                error=f"{e.code().name}: {e.details()}",
            )
        latency_ms = (time.perf_counter() - started) * 1000
        report = HealthReport(live, ready, model_ready, latency_ms)
        try:
            report.model = self.model_metadata(config)
            meta = stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=t)
            report.server = {
                "name": meta.name,
                "version": meta.version,
                "extensions": list(meta.extensions),
            }
        except ModelError as e:
            report.error = str(e)
        except grpc.RpcError as e:
            # ServerMetadata is optional in practice (some servers leave it unimplemented).
            report.error = f"{e.code().name}: {e.details()}"
        return report

    def _check_health_openai(self, config: ModelEndpoint) -> HealthReport:
        started = time.perf_counter()
        try:
            client = self._stub(config)
            data = openai_request(client, config, "GET", "models", None, config.deadline_s)
        except ModelError as e:
            return HealthReport(False, False, False, (time.perf_counter() - started) * 1000, error=str(e))
        except AttemptFailed as e:
            if e.code == "UNAVAILABLE":
                self._invalidate(config)
            # An HTTP error is an answer: the server is live, but not ready for us (bad key, not found...).
            live = e.http_status is not None
            return HealthReport(live, False, False, (time.perf_counter() - started) * 1000, error=f"{e.code}: {e}")
        latency_ms = (time.perf_counter() - started) * 1000
        models = [m for m in data.get("data") or [] if isinstance(m, dict)]
        entry = next((m for m in models if m.get("id") == config.model_name), None)
        report = HealthReport(
            True, True, entry is not None, latency_ms, server={"models": len(models)}, model=entry or {}
        )
        if entry is None:
            ids = ", ".join(str(m.get("id")) for m in models[:20])
            report.error = f"NOT_FOUND: the server lists no model {config.model_name!r} (it has: {ids or '-'})"
        return report

    def model_metadata(self, config: ModelEndpoint) -> dict[str, Any]:
        """ModelMetadata as plain data."""
        request = pb.ModelMetadataRequest(name=config.model_name, version=config.model_version)
        try:
            m = self._stub(config).ModelMetadata(request, timeout=config.deadline_s)
        except grpc.RpcError as e:
            kind = classify(e.code(), e.details() or "")
            cls = PermanentModelError if kind == "permanent" else TransientModelError
            raise cls(e.details() or "", code=e.code().name, model=config.key, attempts=1) from e

        def tensors(ts: Any) -> list[dict[str, Any]]:
            return [{"name": x.name, "datatype": x.datatype, "shape": list(x.shape)} for x in ts]

        return {
            "name": m.name,
            "versions": list(m.versions),
            "platform": m.platform,
            "inputs": tensors(m.inputs),
            "outputs": tensors(m.outputs),
        }
