"""Model config services: ModelConfig → client endpoint, the "test" action, the shared client and readiness.

Every channel to a model server dials an address the SSRF guard approved: `model_endpoint_resolver` is
installed as the resolver of every modelclient channel pool in this process (PipelinesConfig.ready), and
the probes here (the "test" action, template validation, readiness) go through the same pools.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import grpc
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

import modelclient
from dataflare_portal.core.models import AuditAction
from dataflare_portal.core.netguard import (
    EndpointRefused,
    EndpointUnresolvable,
    approve,
    approve_host_port,
    approve_url,
)
from dataflare_portal.core.services import audit_record, audit_snapshot
from modelclient import (
    BreakerPolicy,
    HealthReport,
    InMemoryBreakerStore,
    ModelClient,
    ModelEndpoint,
    ModelError,
    RedisBreakerStore,
    RetryPolicy,
    SqliteBreakerStore,
    TlsConfig,
)
from modelclient import EndpointRefused as ClientEndpointRefused
from modelclient import EndpointUnresolved as ClientEndpointUnresolved
from modelclient.channels import ChannelPool, default_pool, set_default_resolver
from modelclient.openai_http import HttpPool, base_url_parts, default_http_pool
from modelserver.protocol import pb, pb_grpc

from .choices import ModelProtocol
from .models import ModelConfig

__all__ = [
    "DEFAULT_SAMPLE_TEXT",
    "PORTAL_PARAMETER_KEYS",
    "model_client",
    "model_client_configure",
    "model_config_endpoint_check",
    "model_config_endpoint",
    "model_config_forget",
    "model_config_probe",
    "model_config_request_parameters",
    "model_config_test",
    "model_endpoint_guard_install",
    "model_endpoint_resolver",
    "model_server_ready",
    "model_services_ready",
    "model_services_status",
    "on_worker_start",
]

log = logging.getLogger(__name__)

DEFAULT_SAMPLE_TEXT = (
    "DataFlare turns raw text into training data. This sample checks that the model answers with a result."
)
# Keys of ModelConfig.parameters that configure the portal, not the model: never sent as request parameters.
PORTAL_PARAMETER_KEYS = frozenset({"prompt_template", "input_name", "raw_contents", "tls_server_name"})
# The admin/API test must answer while the operator waits, whatever deadline the config allows batches.
TEST_DEADLINE_CAP_S = 10.0
READINESS_DEADLINE_S = 1.0
READINESS_MAX_ENDPOINTS = 20
# /readyz details list at most this many model configs.
STATUS_MAX_CONFIGS = 50


# ---- ModelConfig → client configuration --------------------------------------------------------------
def model_config_request_parameters(config: ModelConfig) -> dict[str, Any]:
    """The model parameters of a config (temperature, max_tokens...) without the portal's own keys."""
    return {k: v for k, v in config.parameters_with_secrets().items() if k not in PORTAL_PARAMETER_KEYS}


def model_config_endpoint(config: ModelConfig) -> ModelEndpoint:
    """The modelclient endpoint (deadline, retries, in-flight bound, breaker, TLS) of a ModelConfig."""
    params = config.parameters or {}
    tls = None
    if config.tls:
        tls = TlsConfig(
            root_certs=config.tls_ca_cert.encode() if config.tls_ca_cert.strip() else None,
            server_name=params.get("tls_server_name") or None,
        )
    return ModelEndpoint(
        endpoint=config.endpoint,
        model_name=config.model_name,
        model_version=config.model_version or "",
        input_name=str(params.get("input_name") or "text"),
        parameters=model_config_request_parameters(config),
        deadline_s=config.deadline_ms / 1000.0,
        retry=RetryPolicy(
            max_attempts=config.max_attempts,
            backoff_base_s=config.backoff_base_ms / 1000.0,
            backoff_max_s=max(config.backoff_max_ms, config.backoff_base_ms) / 1000.0,
        ),
        max_in_flight=config.max_in_flight,
        breaker=BreakerPolicy(
            failure_threshold=config.breaker_failure_threshold,
            reset_timeout_s=float(config.breaker_reset_seconds),
        ),
        tls=tls,
        raw_contents=bool(params.get("raw_contents", False)),
        config_id=str(config.pk) if config.pk else "",
        protocol=config.protocol,
        openai_api=config.openai_api,
        api_key=config.api_key() if config.protocol == ModelProtocol.OPENAI else "",
    )


def model_config_endpoint_check(endpoint: str, protocol: str = ModelProtocol.KSERVE_V2) -> str:
    """An endpoint the portal may dial (format and SSRF guard); raises EndpointRefused naming `endpoint`.

    KServe V2: "host:port". OpenAI-compatible: an http(s) base URL without credentials, query or fragment.
    """
    text = (endpoint or "").strip()
    if protocol == ModelProtocol.OPENAI:
        try:
            base_url_parts(text)
        except ClientEndpointRefused:
            raise EndpointRefused(
                _("%(url)s is not an http(s) base URL without credentials, query or fragment.") % {"url": text},
                "endpoint",
            ) from None
        approve_url(text, field="endpoint")
        return text.rstrip("/")
    approve_host_port(text, field="endpoint")
    return text


# ---- the SSRF guard as the resolver of every channel pool ---------------------------------------------
def model_endpoint_resolver(host: str, port: int) -> list[str]:
    """The channel pools' resolver: the SSRF guard's approved addresses, its refusals as modelclient errors."""
    try:
        return list(approve(host, port, field="endpoint").addresses)
    except EndpointUnresolvable as exc:
        raise ClientEndpointUnresolved(str(exc)) from exc
    except EndpointRefused as exc:
        raise ClientEndpointRefused(str(exc)) from exc


def model_endpoint_guard_install() -> None:
    """Make the SSRF guard the resolver of every modelclient channel pool in this process."""
    set_default_resolver(model_endpoint_resolver)


def model_config_forget(*, config_id: Any) -> None:
    """Close this process's channel of a changed or deleted config (other processes replace theirs on next use)."""
    default_pool().discard(config_id)
    default_http_pool().discard(config_id)


# Fields a channel is built from; saving only others (e.g. the test result) keeps the channel.
CHANNEL_FIELDS = frozenset({"endpoint", "tls", "tls_ca_cert", "parameters", "protocol", "api_key_ciphertext"})


def model_config_saved_or_deleted(sender, instance: ModelConfig, update_fields=None, **kwargs) -> None:
    """post_save/post_delete receiver: a cached channel must not outlive the endpoint it was opened for."""
    if update_fields is not None and not CHANNEL_FIELDS.intersection(update_fields):
        return
    if instance.pk is not None:
        model_config_forget(config_id=instance.pk)


# ---- the process-wide client with a shared breaker ----------------------------------------------------
_client_lock = threading.Lock()
_client_pid: int | None = None


def breaker_store_default():
    """Redis when the portal has it (all machines share it), else a SQLite file all local workers share."""
    if settings.REDIS_URL:
        return RedisBreakerStore(settings.REDIS_URL)
    return SqliteBreakerStore(settings.DATA_DIR / "breaker.sqlite3")


def model_client_configure(*, breaker_store=None) -> ModelClient:
    """Install this process's model client with a breaker store every worker shares."""
    global _client_pid
    with _client_lock:
        client = modelclient.configure(breaker_store=breaker_store or breaker_store_default())
        _client_pid = os.getpid()
    return client


def model_client() -> ModelClient:
    """This process's client, configured on first use (and again in a forked child)."""
    global _client_pid
    if _client_pid != os.getpid():
        with _client_lock:
            # Re-checked under the lock: batches on a threads pool may all arrive here at once.
            if _client_pid != os.getpid():
                modelclient.configure(breaker_store=breaker_store_default())
                _client_pid = os.getpid()
    return modelclient.default_client()


def on_worker_start(**kwargs) -> None:
    """Celery worker_init / worker_process_init: give the worker the shared breaker store up front."""
    try:
        model_client_configure()
    except Exception:
        # A worker without a shared breaker still works (in-memory breaker); it must not fail to start.
        log.warning("could not configure the shared model breaker store", exc_info=True)


# ---- probes: the "test" action, template validation, readiness -----------------------------------------
@contextmanager
def _probe_client() -> Iterator[ModelClient]:
    """A client on a fresh pool (resolved and checked now) with a private breaker, closed after the probe."""
    pool = ChannelPool(resolver=model_endpoint_resolver)
    http = HttpPool(resolver=model_endpoint_resolver)
    try:
        yield ModelClient(breaker_store=InMemoryBreakerStore(), channel_pool=pool, http_pool=http)
    finally:
        pool.close()
        http.close()


def model_config_probe(config: ModelConfig, *, deadline_s: float) -> HealthReport:
    """Server and model health of a config over a guarded, throwaway channel (validation probes)."""
    endpoint = model_config_endpoint(config)
    probe = dataclasses.replace(
        endpoint, deadline_s=min(endpoint.deadline_s, deadline_s), retry=RetryPolicy(max_attempts=1)
    )
    with _probe_client() as client:
        return client.check_health(probe)


def _render_sample(config: ModelConfig, sample_text: str) -> tuple[str, str]:
    """The sample as the stage would send it: through the config's prompt template when it has one."""
    from .stagekinds.inference import PromptError, render_prompt

    template = (config.parameters or {}).get("prompt_template")
    if not template:
        return sample_text, ""
    try:
        return render_prompt(template, {"text": sample_text}), ""
    except PromptError as exc:
        return sample_text, str(exc)


def _shorten(value: Any, limit: int = 2000) -> Any:
    """Outputs shown in the admin and stored on the row stay small."""
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + "…"
    if isinstance(value, dict):
        return {k: _shorten(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [_shorten(v, limit) for v in value[:50]]
    return value


def model_config_test(*, config: ModelConfig, actor, sample_text: str = DEFAULT_SAMPLE_TEXT) -> dict[str, Any]:
    """Check the server's health and run one sample inference; store and audit the result.

    Returns:
        {"ok", "tested_at", "health": {...}, "inference": {"ok", "latency_ms", "output", ...}, "breaker"}.
    """
    endpoint = model_config_endpoint(config)
    deadline = min(endpoint.deadline_s, TEST_DEADLINE_CAP_S)
    # One attempt, short deadline, private breaker: the operator sees what the server does now, and a
    # failing test neither waits for retries nor counts against the breaker the workers share.
    probe = dataclasses.replace(endpoint, deadline_s=deadline, retry=RetryPolicy(max_attempts=1))
    with _probe_client() as client:
        # The probe's pool resolves and checks the endpoint now (DNS may have changed since it was saved)
        # and both calls below dial the address approved then.
        health = client.check_health(probe)
        result = _test_result(config, endpoint, client, probe, health, sample_text)
    return _test_record(config, actor, result)


def _test_result(
    config: ModelConfig,
    endpoint: ModelEndpoint,
    client: ModelClient,
    probe: ModelEndpoint,
    health: HealthReport,
    sample_text: str,
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "tested_at": timezone.now().isoformat(),
        "endpoint": config.endpoint,
        "model": config.model_name,
        "health": {
            "live": health.live,
            "ready": health.ready,
            "model_ready": health.model_ready,
            "latency_ms": round(health.latency_ms, 2),
            "server": health.server,
            "model": health.model,
            "error": health.error,
        },
    }
    from .stagekinds.inference import maybe_json

    text, prompt_error = _render_sample(config, sample_text)
    inference: dict[str, Any] = {"ok": False, "input": _shorten(text, 500)}
    if prompt_error:
        inference["error"] = prompt_error
        inference["code"] = "PROMPT_TEMPLATE"
    elif not health.live:
        inference["error"] = _("Skipped: the server is not reachable.")
        inference["code"] = "SKIPPED"
    else:
        started = time.perf_counter()
        try:
            answer = client.infer_texts(probe, [text])
        except ModelError as exc:
            inference.update(error=exc.message, code=exc.code or type(exc).__name__)
        else:
            inference.update(
                ok=True,
                output=_shorten({k: maybe_json(v) for k, v in (answer.outputs[0] if answer.outputs else {}).items()}),
                prompt_tokens=answer.prompt_tokens,
                completion_tokens=answer.completion_tokens,
                usage_reported=answer.usage_reported,
                model_version=answer.model_version,
            )
        inference["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
    result["inference"] = inference
    try:
        snap = model_client().breaker(endpoint).snapshot()
        result["breaker"] = {"state": snap.state, "failures": snap.failures, "retry_after": round(snap.retry_after, 1)}
    except Exception:  # the breaker store is informative here, never a reason to fail the test
        log.warning("breaker snapshot failed for %s", endpoint.key, exc_info=True)
    result["ok"] = bool(health.live and health.ready and health.model_ready and inference["ok"])
    return result


def _test_record(config: ModelConfig, actor, result: dict[str, Any]) -> dict[str, Any]:
    health, inference = result["health"], result["inference"]
    before = audit_snapshot(config)
    config.last_tested_at = timezone.now()
    config.last_test_result = result
    config.full_clean()
    with transaction.atomic():
        config.save(update_fields=["last_tested_at", "last_test_result", "updated_at"])
        audit_record(
            actor=actor,
            action=AuditAction.RUN,
            instance=config,
            before={"last_test_result": before.get("last_test_result")},
            after={"last_test_result": result},
            message=(
                _("Model config test passed in %(ms)s ms.") % {"ms": inference.get("latency_ms")}
                if result["ok"]
                else _("Model config test failed: %(error)s") % {"error": health["error"] or inference.get("error", "")}
            ),
        )
    return result


# ---- readiness ------------------------------------------------------------------------------------------
# Readiness asks the guard every time (recheck_s=0): the answer reflects what the name resolves to now,
# and a channel whose approved address did not change is reused.
_readiness_pool = ChannelPool(resolver=model_endpoint_resolver, recheck_s=0)


def model_server_ready(config: ModelConfig, *, deadline_s: float = 1.0) -> tuple[bool, str]:
    """ServerReady of a config's server over a guarded channel: (ready, "" or a status code)."""
    endpoint = model_config_endpoint(config)
    try:
        stub = pb_grpc.GRPCInferenceServiceStub(_readiness_pool.get(endpoint))
    except ModelError as exc:
        # Refused by the SSRF guard (or unresolvable): nothing was dialled.
        return False, exc.code or type(exc).__name__
    try:
        ready = stub.ServerReady(pb.ServerReadyRequest(), timeout=deadline_s).ready
    except grpc.RpcError as exc:
        return False, exc.code().name
    return ready, "" if ready else "NOT_READY"


def _server_ready(endpoint: str, tls: bool, ca: str, server_name: str) -> tuple[str, bool, str]:
    config = ModelConfig(
        endpoint=endpoint,
        model_name="readiness",
        tls=tls,
        tls_ca_cert=ca,
        parameters={"tls_server_name": server_name} if server_name else {},
    )
    ready, why = model_server_ready(config, deadline_s=READINESS_DEADLINE_S)
    return endpoint, ready, why


def model_services_ready() -> tuple[bool, str]:
    """Readiness check: every distinct model endpoint answers ServerReady within a short deadline."""
    targets = []
    seen = set()
    # ServerReady is KServe V2; OpenAI-compatible services are checked by their "test" action.
    rows = (
        ModelConfig.objects.filter(protocol=ModelProtocol.KSERVE_V2)
        .order_by("endpoint")
        .values_list("endpoint", "tls", "tls_ca_cert", "parameters")
    )
    for endpoint, tls, ca, params in rows.iterator():
        server_name = str(params.get("tls_server_name") or "") if isinstance(params, dict) else ""
        key = (endpoint, tls, ca, server_name)
        if key not in seen:
            seen.add(key)
            targets.append(key)
        if len(targets) >= READINESS_MAX_ENDPOINTS:
            break
    if not targets:
        return True, _("no model configs")
    with ThreadPoolExecutor(max_workers=min(8, len(targets))) as pool:
        answers = list(pool.map(lambda t: _server_ready(*t), targets))
    bad = [f"{endpoint} ({why})" for endpoint, ok, why in answers if not ok]
    if bad:
        detail = _("%(bad)s of %(n)s model endpoints not ready") % {"bad": len(bad), "n": len(answers)}
        return False, f"{detail}: {', '.join(bad)}"
    return True, _("%(n)s model endpoints ready") % {"n": len(answers)}


# ---- status for /readyz details ---------------------------------------------------------------------------
def model_services_status() -> dict:
    """/readyz component `model_services`: recorded state only (shared breaker, last test), never a dial.

    A model service that is down makes its stages wait; it never makes the portal unready. Endpoints are
    user-entered, so readiness must not contact them (that would make /readyz a probe): the breaker that
    every worker shares and the last "test connection" say what is known.
    """
    configs = list(
        ModelConfig.objects.order_by("name").only(
            "name",
            "endpoint",
            "model_name",
            "model_version",
            "last_tested_at",
            "last_test_result",
            "breaker_failure_threshold",
            "breaker_reset_seconds",
            "deadline_ms",
            "max_attempts",
            "backoff_base_ms",
            "backoff_max_ms",
            "max_in_flight",
            "parameters",
            "tls",
            "tls_ca_cert",
            "protocol",
            "openai_api",
            "api_key_ciphertext",
        )[: STATUS_MAX_CONFIGS + 1]
    )
    if not configs:
        return {"ok": True, "detail": _("no model configs"), "services": {}}
    services, bad = {}, []
    for config in configs[:STATUS_MAX_CONFIGS]:
        item = {"endpoint": config.endpoint, "breaker": None, "last_test_ok": None, "last_tested_at": None}
        try:
            snap = model_client().breaker(model_config_endpoint(config)).snapshot()
            item["breaker"] = {
                "state": snap.state,
                "failures": snap.failures,
                "retry_after": round(snap.retry_after, 1),
            }
        except Exception:  # the shared store is informative here
            log.warning("breaker snapshot failed for %s", config.name, exc_info=True)
        if config.last_tested_at:
            item["last_tested_at"] = config.last_tested_at.isoformat()
            item["last_test_ok"] = bool((config.last_test_result or {}).get("ok"))
        if (item["breaker"] and item["breaker"]["state"] != "closed") or item["last_test_ok"] is False:
            bad.append(config.name)
        services[config.name] = item
    if bad:
        detail = _("%(bad)s of %(n)s model configs degraded (breaker open or last test failed): %(names)s") % {
            "bad": len(bad),
            "n": len(services),
            "names": ", ".join(bad),
        }
    else:
        detail = _("%(n)s model configs: breakers closed, no failed test") % {"n": len(services)}
    return {"ok": not bad, "detail": detail, "services": services, "truncated": len(configs) > STATUS_MAX_CONFIGS}
