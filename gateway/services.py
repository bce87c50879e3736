"""Gateway services: API keys (create, update, revoke), authentication, budgets, metering and the request log."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.db.models import F, Sum
from django.utils import timezone
from django.utils.translation import gettext as _

from dataflare_portal.core.db import atomic_unflushed
from dataflare_portal.core.models import AuditAction
from dataflare_portal.core.services import audit_record, audit_snapshot
from metrics.models import TokenUsage
from metrics.services import token_usage_record_many

from .choices import BudgetPeriod
from .models import KEY_SCHEME, GatewayKey, GatewayRequest

# The stage-template label of gateway traffic in tokens_usage and the rollups (the dashboard's filters).
GATEWAY_STAGE = "gateway"
PREFIX_CHARS = 8


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _audit_view(key: GatewayKey) -> dict:
    snap = audit_snapshot(key)
    snap.pop("key_hash", None)
    snap["allowed_models"] = sorted(key.allowed_models.values_list("name", flat=True)) if key.pk else []
    return snap


def key_create(
    *,
    actor,
    project,
    name: str,
    allowed_models=(),
    store_prompts: bool = False,
    token_budget: int | None = None,
    budget_period: str = BudgetPeriod.MONTH,
    expires_at: dt.datetime | None = None,
) -> tuple[GatewayKey, str]:
    """Create a key; returns it and the secret key text, which is never stored and never shown again."""
    while True:
        prefix = secrets.token_hex(PREFIX_CHARS // 2)
        if not GatewayKey.objects.filter(prefix=prefix).exists():
            break
    # 32 random bytes (256 bits): a SHA-256 of it needs no salt or slow hash to resist guessing.
    text = f"{KEY_SCHEME}{prefix}_{secrets.token_urlsafe(32)}"
    key = GatewayKey(
        project=project,
        name=name,
        prefix=prefix,
        key_hash=_hash(text),
        store_prompts=store_prompts,
        token_budget=token_budget,
        budget_period=budget_period or BudgetPeriod.MONTH,
        expires_at=expires_at,
        created_by=actor if getattr(actor, "is_authenticated", False) else None,
    )
    key.full_clean()
    with transaction.atomic():
        key.save()
        key.allowed_models.set(list(allowed_models))
        audit_record(actor=actor, action=AuditAction.CREATE, instance=key, after=_audit_view(key))
    return key, text


def key_update(*, actor, key: GatewayKey, allowed_models=None, **fields) -> GatewayKey:
    """Change a key's name, models, prompt storage, budget or expiry (never its secret); audited."""
    editable = {"name", "store_prompts", "token_budget", "budget_period", "expires_at"}
    unknown = set(fields) - editable
    if unknown:
        raise ValueError(f"not editable: {sorted(unknown)}")
    with transaction.atomic():
        locked = GatewayKey.objects.select_for_update().get(pk=key.pk)
        before = _audit_view(locked)
        for name, value in fields.items():
            setattr(locked, name, value)
        locked.full_clean()
        locked.save()
        if allowed_models is not None:
            locked.allowed_models.set(list(allowed_models))
        audit_record(actor=actor, action=AuditAction.UPDATE, instance=locked, before=before, after=_audit_view(locked))
    return locked


def key_revoke(*, actor, key: GatewayKey) -> GatewayKey:
    """Revoke a key at once (idempotent: revoking again changes nothing and writes no entry)."""
    with transaction.atomic():
        locked = GatewayKey.objects.select_for_update().get(pk=key.pk)
        if locked.revoked_at is not None:
            return locked
        before = _audit_view(locked)
        locked.revoked_at = timezone.now()
        locked.save(update_fields=["revoked_at"])
        audit_record(
            actor=actor,
            action=AuditAction.UPDATE,
            instance=locked,
            before=before,
            after=_audit_view(locked),
            message=_("Gateway key revoked."),
        )
    return locked


# ---- authentication ------------------------------------------------------------------------------------
class GatewayAuthError(Exception):
    """The request's key is missing, malformed, unknown, revoked or expired (HTTP 401)."""

    def __init__(self, message: str, code: str = "invalid_api_key") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def key_text(authorization: str) -> str:
    """The key text of an `Authorization: Bearer dfk_…` header; GatewayAuthError naming what is wrong with it."""
    scheme, _sep, text = (authorization or "").strip().partition(" ")
    text = text.strip()
    if not authorization:
        raise GatewayAuthError(
            _("No API key: send the gateway key as 'Authorization: Bearer <key>'."), "missing_api_key"
        )
    if scheme.lower() != "bearer" or not text:
        raise GatewayAuthError(_("The Authorization header must be 'Bearer <key>'."), "invalid_authorization")
    if not text.startswith(KEY_SCHEME) or text.count("_") < 2:
        raise GatewayAuthError(_("This is not a DataFlare gateway key (they start with 'dfk_')."))
    return text


def key_digest(text: str) -> str:
    """The SHA-256 (hex) of a key's text: what is stored, and what the gateway's cache is keyed by."""
    return _hash(text)


def key_lookup(text: str) -> GatewayKey:
    """The key row (project loaded) of a well-formed key text, revoked and expired ones included.

    The prefix finds the row; the whole key's SHA-256 is compared in constant time.
    """
    prefix = text[len(KEY_SCHEME) :].split("_", 1)[0]
    key = GatewayKey.objects.select_related("project").filter(prefix=prefix[:16]).first()
    # Compare even when no row matched, so an unknown prefix costs the same as a wrong secret.
    stored = key.key_hash if key is not None else "0" * 64
    if not hmac.compare_digest(stored, _hash(text)) or key is None:
        raise GatewayAuthError(_("Invalid API key."))
    return key


def key_check_active(key: GatewayKey, *, now: dt.datetime | None = None) -> GatewayKey:
    """The key itself when it may be used now; GatewayAuthError (revoked, expired) otherwise."""
    if key.revoked_at is not None:
        raise GatewayAuthError(
            _("This API key was revoked at %(when)s.") % {"when": key.revoked_at.isoformat(timespec="seconds")},
            "revoked_api_key",
        )
    if key.is_expired(now):
        raise GatewayAuthError(
            _("This API key expired at %(when)s.") % {"when": key.expires_at.isoformat(timespec="seconds")},
            "expired_api_key",
        )
    return key


def key_authenticate(authorization: str, *, now: dt.datetime | None = None) -> GatewayKey:
    """The active key of an `Authorization: Bearer dfk_…` header; GatewayAuthError with a clear message otherwise.

    The messages never repeat the key. (The gateway itself goes through its cache, gateway/runtime.py.)
    """
    return key_check_active(key_lookup(key_text(authorization)), now=now)


# ---- budgets ---------------------------------------------------------------------------------------------
def budget_period_start(period: str, now: dt.datetime) -> dt.datetime:
    """Start of the current day, ISO week (Monday) or month, in the portal's time zone."""
    local = timezone.localtime(now)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == BudgetPeriod.WEEK:
        return day - dt.timedelta(days=day.weekday())
    if period == BudgetPeriod.MONTH:
        return day.replace(day=1)
    return day


@dataclass
class BudgetRefusal:
    message: str
    code: str


def key_tokens_used(key: GatewayKey, since: dt.datetime) -> int:
    """Prompt + completion tokens the key used since `since` (raw tokens_usage, indexed by key and time)."""
    agg = TokenUsage.objects.filter(gateway_key_id=key.pk, ts__gte=since).aggregate(
        total=Sum(F("prompt_tokens") + F("completion_tokens"))
    )
    return int(agg["total"] or 0)


def key_budget_check(key: GatewayKey, *, now: dt.datetime | None = None) -> BudgetRefusal | None:
    """Why this key may not call now (its project's runs paused by a token budget, or its own budget spent)."""
    now = now or timezone.now()
    since = budget_period_start(key.budget_period, now)
    used = key_tokens_used(key, since) if key.token_budget and not key.project.runs_paused else 0
    return key_budget_refusal(key, used=used, since=since)


def key_budget_refusal(key: GatewayKey, *, used: int, since: dt.datetime) -> BudgetRefusal | None:
    """key_budget_check with the key's tokens used since the period's start already known (the gateway's cache)."""
    project = key.project
    if project.runs_paused:
        return BudgetRefusal(
            _("Project %(project)s is over its token budget: %(reason)s")
            % {"project": project.name, "reason": project.paused_reason or _("paused")},
            "project_budget_exceeded",
        )
    if key.token_budget and used >= key.token_budget:
        return BudgetRefusal(
            _(
                "API key %(key)s is over its token budget: %(used)d of %(budget)d tokens used this %(period)s "
                "(since %(since)s)."
            )
            % {
                "key": key.name,
                "used": used,
                "budget": key.token_budget,
                "period": key.get_budget_period_display().lower(),
                "since": since.isoformat(timespec="seconds"),
            },
            "key_budget_exceeded",
        )
    return None


# ---- metering and the request log -------------------------------------------------------------------------
_ONE_SECOND = dt.timedelta(seconds=1)
# When this process last set each key's last_used_at (the gateway's writer is one thread; tests call it directly).
_last_used_written: dict[int, dt.datetime] = {}


def gateway_call_record(**call) -> None:
    """One gateway call: its tokens into tokens_usage (project, key, model), a request-log row, the key's last use.

    Takes the fields of `gateway_calls_record`'s rows as keyword arguments.
    """
    gateway_calls_record([call])


def gateway_calls_record(calls: list[dict]) -> None:
    """Gateway calls in one transaction (the gateway's writer commits a batch at a time); see gateway_call_record.

    Each call: key (GatewayKey, or key_id/project_id/store_prompts), endpoint, model, model_name, model_version,
    stream, http_status, status_code, error, prompt_tokens, completion_tokens, latency_ms, attempts, records,
    request_id, body, metered, and optionally ts (the time it ended; now by default). The request body is kept
    only when the key opted in (`store_prompts`); otherwise nothing of the prompt is.
    """
    now = timezone.now()
    usage, requests, last_used = [], [], {}
    for call in calls:
        key = call["key"]
        ts = call.get("ts") or now
        latency_ms = float(call["latency_ms"])
        model = call["model"]
        if call["metered"]:
            usage.append(
                {
                    "ts": ts,
                    "project_id": key.project_id,
                    "pipeline_id": None,
                    "run_id": None,
                    "stage_template": GATEWAY_STAGE,
                    "model_name": call["model_name"] or model,
                    # The dashboard's model dimension is "name:version"; an unversioned model shows as "name:latest".
                    "model_version": call["model_version"] or "latest",
                    "status_code": call["status_code"],
                    "requests": max(1, call["attempts"]),
                    "records": call["records"],
                    "prompt_tokens": call["prompt_tokens"],
                    "completion_tokens": call["completion_tokens"],
                    "latency_ms_sum": latency_ms,
                    "latency_ms_max": latency_ms,
                    "latency_ms_samples": [latency_ms],
                    "gateway_key_id": key.pk,
                }
            )
        body = call.get("body")
        requests.append(
            GatewayRequest(
                ts=ts,
                key_id=key.pk,
                project_id=key.project_id,
                endpoint=call["endpoint"],
                model=model[:100],
                stream=call["stream"],
                http_status=call["http_status"],
                status_code=call["status_code"][:32],
                error=call["error"][:500],
                prompt_tokens=call["prompt_tokens"],
                completion_tokens=call["completion_tokens"],
                latency_ms=latency_ms,
                request_id=call["request_id"][:64],
                prompt=body if key.store_prompts and body is not None else None,
            )
        )
        last_used[key.pk] = max(ts, last_used.get(key.pk, ts))
    # Each answer waits for this commit (gateway/runtime.py); settings.GATEWAY_METER_SYNCHRONOUS_COMMIT says
    # whether it also waits for the WAL flush.
    with atomic_unflushed(not settings.GATEWAY_METER_SYNCHRONOUS_COMMIT):
        token_usage_record_many(usage)
        GatewayRequest.objects.bulk_create(requests)
        # At most one write a second per key: a busy key does not serialise on its own row (and this process
        # does not even ask when it wrote the key's time less than a second ago).
        for key_id, ts in sorted(last_used.items()):
            written = _last_used_written.get(key_id)
            if written is not None and dt.timedelta(0) <= ts - written < _ONE_SECOND:
                continue
            GatewayKey.objects.filter(pk=key_id).exclude(last_used_at__gte=ts - _ONE_SECOND).update(last_used_at=ts)
            _last_used_written[key_id] = ts


def gateway_requests_prune(*, now: dt.datetime | None = None, chunk: int = 20000) -> int:
    """Delete request-log rows older than the `gateway_request_retention_days` setting; returns how many.

    Only the request log: the calls' tokens stay in tokens_usage and the rollups under metrics retention.
    """
    from dataflare_portal.core.config import config_get

    now = now or timezone.now()
    cutoff = now - dt.timedelta(days=int(config_get("gateway_request_retention_days")))
    deleted = 0
    while True:
        ids = list(GatewayRequest.objects.filter(ts__lt=cutoff).order_by().values_list("id", flat=True)[:chunk])
        if not ids:
            return deleted
        deleted += GatewayRequest.objects.filter(id__in=ids).delete()[0]
