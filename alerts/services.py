"""Alert services: evaluation and transitions (with the outbox), acknowledge/resolve, budget pauses, delivery."""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
from dataclasses import dataclass

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _

from catalog.models import Project
from dataflare_portal.core.models import AuditAction
from dataflare_portal.core.netguard import EndpointRefused, check_url
from dataflare_portal.core.secrets import encrypt_secret
from dataflare_portal.core.services import audit_record, audit_snapshot, object_save
from pipelines.models import Pipeline

from . import evaluation, notify
from .choices import AlertEventKind, AlertStatus, ChannelKind, NotificationStatus, RuleKind, Severity
from .models import Alert, AlertEvent, AlertRule, Notification, NotificationChannel, RunWebhook

logger = logging.getLogger(__name__)

BANNER_CACHE_KEY = "alerts:banner:v2"  # v2: title codes and parameters, rendered per reader
# Delivery: a claim lasts longer than a webhook timeout; transient failures back off exponentially.
CLAIM_SECONDS = 120
MAX_ATTEMPTS = 8
BACKOFF_BASE_SECONDS = 30
BACKOFF_MAX_SECONDS = 3600


@dataclass(frozen=True)
class Change:
    """One transition made by an evaluation pass (what `evaluate_alerts` prints)."""

    event: str
    rule: str
    scope: str
    severity: str
    value: float | None
    alert_id: int
    title: str


def _banner_changed() -> None:
    # Drop the cached banner now and again after commit, so no reader caches the pre-commit state.
    cache.delete(BANNER_CACHE_KEY)
    transaction.on_commit(lambda: cache.delete(BANNER_CACHE_KEY))


# ---- Transitions and the outbox --------------------------------------------------------------
def alert_absolute_url(alert: Alert) -> str:
    """The alert's page, absolute when PORTAL_BASE_URL is configured (for emails and webhooks)."""
    path = reverse("alerts:detail", args=[alert.pk])
    base = getattr(settings, "PORTAL_BASE_URL", "") or ""
    return base.rstrip("/") + path if base else path


def _payload(alert: Alert, event: AlertEvent) -> dict:
    return {
        "event": event.kind,
        "alert": {
            "id": alert.pk,
            "title": alert.title,
            "rule": alert.rule.name,
            "kind": alert.rule.kind,
            "scope": alert.scope_key,
            "severity": event.severity,
            "status": alert.status,
            "value": alert.value,
            "fired_at": alert.fired_at.isoformat(),
            "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
            "project_id": alert.project_id,
            "pipeline_id": alert.pipeline_id,
            "run_id": str(alert.run_id) if alert.run_id else None,
            "url": alert_absolute_url(alert),
            "evidence": alert.evidence,
        },
        "at": event.at.isoformat(),
    }


def _in_cooldown(alert: Alert, kind: str, severity: str, now: dt.datetime) -> bool:
    """Whether this transition's notification is held back by `alert_default_cooldown_minutes`.

    Within the cooldown after an alert's last notification, a de-escalation is not sent, nor an
    escalation to a severity already notified in that time. Firing and resolution always are, and so
    is an escalation past anything notified in the cooldown, so a flapping alert costs one message
    per cooldown and never hides a worse state or its end.
    """
    if kind not in (AlertEventKind.ESCALATED, AlertEventKind.DEESCALATED) or alert.pk is None:
        return False
    from dataflare_portal.core.config import config_get

    minutes = float(config_get("alert_default_cooldown_minutes"))
    if minutes <= 0:
        return False
    recent = set(
        Notification.objects.filter(alert=alert, alert_event__at__gte=now - dt.timedelta(minutes=minutes))
        .values_list("alert_event__severity", flat=True)
        .distinct()
    )
    if not recent:
        return False
    if kind == AlertEventKind.DEESCALATED:
        return True
    return max(Severity.rank(s) for s in recent) >= Severity.rank(severity)


def _record_transition(
    *, alert: Alert, kind: str, severity: str, now: dt.datetime, actor=None, note: str = "", channels=None
) -> AlertEvent:
    """Write the transition and, for notified kinds, one outbox row per enabled channel in this transaction."""
    event = AlertEvent.objects.create(
        alert=alert, kind=kind, severity=severity, value=alert.value, at=now, actor=actor, note=note
    )
    rule = alert.rule
    if kind in AlertEventKind.notified() and not rule.muted and not _in_cooldown(alert, kind, severity, now):
        if channels is None:
            channels = list(rule.channels.filter(enabled=True))
        payload = _payload(alert, event)
        Notification.objects.bulk_create(
            [
                Notification(
                    alert=alert, alert_event=event, channel=c, event=kind, payload=payload, next_attempt_at=now
                )
                for c in channels
                if c.enabled and c.accepts(severity)
            ]
        )
    _banner_changed()
    return event


def _apply_observation(alert: Alert, obs: evaluation.Observation, now: dt.datetime) -> None:
    alert.value = obs.value
    alert.title = obs.title
    alert.title_code = obs.title_code
    alert.title_params = obs.title_params
    alert.evidence = {**obs.evidence, "dedup_token": obs.dedup_token} if obs.dedup_token else obs.evidence
    alert.last_evaluated_at = now


def _open_alert(rule, obs, severity, now) -> tuple[Alert, bool]:
    """Create the open alert of a scope, or return the one a concurrent evaluation created (the backstop)."""
    alert = Alert(
        rule=rule,
        scope_key=obs.scope_key,
        severity=severity,
        status=AlertStatus.FIRING,
        project_id=obs.project_id,
        pipeline_id=obs.pipeline_id,
        run_id=obs.run_id,
        stage_template=obs.stage_template,
        model_version=obs.model_version[:160],
        fired_at=now,
    )
    _apply_observation(alert, obs, now)
    try:
        with transaction.atomic():
            alert.save()
        return alert, True
    except IntegrityError:
        existing = (
            Alert.objects.select_for_update()
            .select_related("rule")
            .get(rule=rule, scope_key=obs.scope_key, status__in=AlertStatus.open())
        )
        return existing, False


def _resolve(alert: Alert, now: dt.datetime, *, actor=None, note: str = "", channels=None) -> AlertEvent:
    alert.status = AlertStatus.RESOLVED
    alert.resolved_at = now
    alert.resolved_by = actor if actor is not None and getattr(actor, "is_authenticated", False) else None
    alert.resolve_note = note
    alert.last_evaluated_at = now
    alert.save()
    return _record_transition(
        alert=alert,
        kind=AlertEventKind.RESOLVED,
        severity=alert.severity,
        now=now,
        actor=alert.resolved_by,
        note=note,
        channels=channels,
    )


def _pause_scope_for_budget(rule: AlertRule, alert: Alert) -> dict | None:
    """Pause new runs of the budget's scope (pipeline if it has one, else project); audited as the system."""
    target = None
    if alert.pipeline_id and (rule.pipeline_id or rule.group_by == "pipeline"):
        target = Pipeline.objects.select_for_update().filter(pk=alert.pipeline_id).first()
    elif alert.project_id:
        target = Project.objects.select_for_update().filter(pk=alert.project_id).first()
    if target is None:
        return None
    info = {"type": target._meta.model_name, "id": target.pk, "name": str(target)}
    if target.runs_paused:
        return {**info, "already_paused": True}
    before = audit_snapshot(target)
    target.runs_paused = True
    target.paused_reason = (
        _("Token budget exceeded (rule %(rule)s, %(value)s of the budget); lift the pause to start runs again.")
        % {"rule": rule.name, "value": f"{(alert.value or 0):.0%}"}
    )[:300]
    target.save(update_fields=["runs_paused", "paused_reason", "updated_at"])
    audit_record(
        actor=None,
        action=AuditAction.PAUSE,
        instance=target,
        before=before,
        after=audit_snapshot(target),
        message=target.paused_reason,
    )
    return info


def _maybe_pause(rule: AlertRule, alert: Alert, severity: str) -> bool:
    """On a critical budget breach of a rule that pauses runs, pause its scope and note it in the evidence."""
    if not (rule.kind == RuleKind.TOKEN_BUDGET and severity == Severity.CRITICAL and rule.pause_runs_on_breach):
        return False
    paused = _pause_scope_for_budget(rule, alert)
    if paused:
        alert.evidence = {**alert.evidence, "paused": paused}
    return bool(paused)


def rule_evaluate(*, rule: AlertRule, now: dt.datetime | None = None) -> list[Change]:
    """Evaluate one rule: fire, escalate, de-escalate or resolve its alerts; idempotent under repeats."""
    now = now or timezone.now()
    try:
        observations = evaluation.observe(rule, now)
    except evaluation.EvaluationUnavailable as exc:
        AlertRule.objects.filter(pk=rule.pk).update(last_evaluated_at=now, last_error=str(exc)[:1000])
        logger.warning("alert rule %s not evaluated: %s", rule.name, exc)
        return []
    changes: list[Change] = []
    with transaction.atomic():
        # Serialises evaluations of one rule (duplicate or overlapping beats): a second pass waits here,
        # then sees the first one's alerts and finds nothing left to change.
        locked = AlertRule.objects.select_for_update().filter(pk=rule.pk, enabled=True).first()
        if locked is None:
            return []
        rule = locked
        channels = list(rule.channels.filter(enabled=True))
        open_alerts = {
            a.scope_key: a for a in Alert.objects.select_for_update().filter(rule=rule, status__in=AlertStatus.open())
        }
        for a in open_alerts.values():
            a.rule = rule
        suppressed = set()
        if rule.kind in RuleKind.per_run():
            keys = [o.scope_key for o in observations if o.scope_key not in open_alerts]
            if keys:
                suppressed = {
                    (key, (ev or {}).get("dedup_token"))
                    for key, ev in Alert.objects.filter(
                        rule=rule, status=AlertStatus.RESOLVED, scope_key__in=keys, resolved_by__isnull=False
                    ).values_list("scope_key", "evidence")
                }

        def change(alert, event):
            changes.append(
                Change(event.kind, rule.name, alert.scope_key, event.severity, alert.value, alert.pk, alert.title)
            )

        refreshed: list[Alert] = []
        for obs in observations:
            severity = rule.severity_for(obs.value)
            alert = open_alerts.pop(obs.scope_key, None)
            if severity is None:
                if alert is not None:
                    _apply_observation(alert, obs, now)
                    change(alert, _resolve(alert, now, channels=channels))
                continue
            if alert is None:
                if (obs.scope_key, obs.dedup_token) in suppressed:
                    continue  # an operator resolved this very failure; do not raise it again
                alert, created = _open_alert(rule, obs, severity, now)
                if created:
                    if _maybe_pause(rule, alert, severity):
                        alert.save(update_fields=["evidence"])
                    change(
                        alert,
                        _record_transition(
                            alert=alert, kind=AlertEventKind.FIRED, severity=severity, now=now, channels=channels
                        ),
                    )
                    continue
                alert.rule = rule
            previous = alert.severity
            _apply_observation(alert, obs, now)
            if previous == severity:
                refreshed.append(alert)
                continue
            escalated = Severity.rank(severity) > Severity.rank(previous)
            alert.severity = severity
            if escalated and alert.status == AlertStatus.ACKNOWLEDGED:
                # An acknowledgement covered the lower severity; a worse state needs a fresh look.
                alert.status = AlertStatus.FIRING
            if escalated:
                _maybe_pause(rule, alert, severity)
            alert.save()
            kind = AlertEventKind.ESCALATED if escalated else AlertEventKind.DEESCALATED
            change(alert, _record_transition(alert=alert, kind=kind, severity=severity, now=now, channels=channels))
        # Unchanged severity: fresh value and evidence only, no event, no notification. One short UPDATE
        # per alert beats bulk_update here, whose CASE building costs more Python than the queries.
        for a in refreshed:
            Alert.objects.filter(pk=a.pk).update(
                value=a.value,
                title=a.title,
                title_code=a.title_code,
                title_params=a.title_params,
                evidence=a.evidence,
                last_evaluated_at=a.last_evaluated_at,
            )
        # Scopes no longer observed (no data, the run finished): their condition cleared.
        for alert in open_alerts.values():
            alert.value = None
            change(alert, _resolve(alert, now, channels=channels))
        AlertRule.objects.filter(pk=rule.pk).update(last_evaluated_at=now, last_error="")
    return changes


def _resolve_for_disabled_rules(now: dt.datetime) -> list[Change]:
    """Close the open alerts of rules an operator switched off: nobody watches that condition any more."""
    changes = []
    with transaction.atomic():
        for alert in (
            Alert.objects.select_for_update()
            .select_related("rule")
            .filter(rule__enabled=False, status__in=AlertStatus.open())[:500]
        ):
            event = _resolve(alert, now, note=_("The rule was disabled."))
            changes.append(
                Change(event.kind, alert.rule.name, alert.scope_key, event.severity, alert.value, alert.pk, alert.title)
            )
    return changes


def alerts_evaluate(*, now: dt.datetime | None = None, rules=None) -> list[Change]:
    """One evaluation pass over every enabled rule (or the given ones); returns the transitions made."""
    now = now or timezone.now()
    qs = rules if rules is not None else AlertRule.objects.filter(enabled=True)
    changes: list[Change] = [] if rules is not None else _resolve_for_disabled_rules(now)
    for rule in qs:
        try:
            changes.extend(rule_evaluate(rule=rule, now=now))
        except SoftTimeLimitExceeded:
            raise  # the pass is out of time: stop here, the next beat starts over
        except Exception:
            # One broken rule must not stop the others; the next pass tries it again.
            logger.exception("alert rule %s failed to evaluate", rule.name)
            AlertRule.objects.filter(pk=rule.pk).update(
                last_evaluated_at=now, last_error=_("Evaluation failed; see the logs.")
            )
    return changes


# ---- Operator actions ------------------------------------------------------------------------
def alert_acknowledge(*, alert: Alert, actor, note: str = "") -> Alert:
    """Acknowledge an open alert with a note: it stays open, leaves the banner and is not re-notified."""
    now = timezone.now()
    with transaction.atomic():
        alert = Alert.objects.select_for_update().select_related("rule").get(pk=alert.pk)
        if alert.status != AlertStatus.FIRING:
            raise ValidationError(
                {
                    "status": _("Only a firing alert can be acknowledged (this one is %(s)s).")
                    % {"s": alert.get_status_display()}
                }
            )
        before = audit_snapshot(alert)
        alert.status = AlertStatus.ACKNOWLEDGED
        alert.acknowledged_at = now
        alert.acknowledged_by = actor if getattr(actor, "is_authenticated", False) else None
        alert.ack_note = note
        alert.full_clean(exclude=["rule", "project", "pipeline"])
        alert.save()
        _record_transition(
            alert=alert,
            kind=AlertEventKind.ACKNOWLEDGED,
            severity=alert.severity,
            now=now,
            actor=alert.acknowledged_by,
            note=note,
        )
        audit_record(
            actor=actor,
            action=AuditAction.ACKNOWLEDGE,
            instance=alert,
            before=before,
            after=audit_snapshot(alert),
            message=note,
        )
    return alert


def alert_resolve(*, alert: Alert, actor, note: str = "") -> Alert:
    """Resolve an open alert by hand; a metric condition that persists fires again at the next pass."""
    now = timezone.now()
    with transaction.atomic():
        alert = Alert.objects.select_for_update().select_related("rule").get(pk=alert.pk)
        if not alert.is_open:
            raise ValidationError({"status": _("This alert is already resolved.")})
        before = audit_snapshot(alert)
        _resolve(alert, now, actor=actor, note=note)
        audit_record(
            actor=actor,
            action=AuditAction.RESOLVE,
            instance=alert,
            before=before,
            after=audit_snapshot(alert),
            message=note,
        )
    return alert


def budget_pause_lift(*, scope: Project | Pipeline, actor, note: str = "") -> Project | Pipeline:
    """Let new runs of a project or pipeline start again after a budget pause (audited with the note)."""
    if not isinstance(scope, (Project, Pipeline)):
        raise ValidationError({"scope": _("A budget pause is lifted from a project or a pipeline.")})
    with transaction.atomic():
        target = type(scope).objects.select_for_update().get(pk=scope.pk)
        if not target.runs_paused:
            raise ValidationError({"scope": _("New runs of %(name)s are not paused.") % {"name": target}})
        before = audit_snapshot(target)
        target.runs_paused = False
        target.paused_reason = ""
        target.full_clean()
        target.save(update_fields=["runs_paused", "paused_reason", "updated_at"])
        audit_record(
            actor=actor,
            action=AuditAction.UNPAUSE,
            instance=target,
            before=before,
            after=audit_snapshot(target),
            message=note or _("Budget pause lifted."),
        )
    return target


# ---- Channels --------------------------------------------------------------------------------
def channel_save(*, actor, channel: NotificationChannel, secret: str | None = None) -> NotificationChannel:
    """Validate and save a channel; a new secret is stored encrypted; a webhook must not point inside."""
    if channel.kind == ChannelKind.WEBHOOK and channel.target:
        try:
            check_url(channel.target, field="target")
        except EndpointRefused as exc:
            raise ValidationError({"target": str(exc)}) from exc
    if secret is not None:
        channel.secret_ciphertext = encrypt_secret(secret)
    if channel.kind == ChannelKind.WEBHOOK and not channel.secret_ciphertext:
        raise ValidationError({"secret": _("A webhook needs a shared secret to sign its requests.")})
    if channel.enabled:
        channel.disabled_reason = ""
    return object_save(actor=actor, instance=channel)


def channel_disable(*, channel: NotificationChannel | RunWebhook, reason: str, actor=None) -> None:
    """Turn a channel or run webhook off with the reason (a permanent delivery failure, or an operator)."""
    with transaction.atomic():
        before = audit_snapshot(channel)
        updated = (
            type(channel)
            .objects.filter(pk=channel.pk, enabled=True)
            .update(enabled=False, disabled_reason=reason[:2000], updated_at=timezone.now())
        )
        if updated:
            channel.refresh_from_db()
            audit_record(
                actor=actor,
                action=AuditAction.UPDATE,
                instance=channel,
                before=before,
                after=audit_snapshot(channel),
                message=_("Channel disabled: %(r)s") % {"r": reason[:500]},
            )


# ---- Run webhooks ----------------------------------------------------------------------------
def webhook_save(*, actor, webhook: RunWebhook, secret: str | None = None) -> RunWebhook:
    """Validate and save a project's run webhook: the URL must not point inside, the secret is stored encrypted."""
    if webhook.target:
        try:
            check_url(webhook.target, field="target")
        except EndpointRefused as exc:
            raise ValidationError({"target": str(exc)}) from exc
    if secret is not None:
        webhook.secret_ciphertext = encrypt_secret(secret)
    if not webhook.secret_ciphertext:
        raise ValidationError({"secret": _("A webhook needs a shared secret to sign its requests.")})
    if webhook.enabled:
        webhook.disabled_reason = ""
    return object_save(actor=actor, instance=webhook)


def run_event_fan_out(event) -> int:
    """Queue a run event for every enabled webhook of its project that wants it (in the event's transaction).

    Registered as a run-event listener (alerts/apps.py), so the rows commit or roll back with the
    transition; the unique (run event, webhook) pair makes a second fan-out of one event fail, not repeat.
    """
    hooks = [w for w in RunWebhook.objects.filter(project_id=event.project_id, enabled=True) if w.wants(event.kind)]
    if not hooks:
        return 0
    Notification.objects.bulk_create(
        [
            Notification(run_event=event, webhook=w, event=event.kind, payload=event.payload, next_attempt_at=event.at)
            for w in hooks
        ]
    )
    # Ring the sender once the transition is committed instead of waiting for its beat.
    from .tasks import send_notifications

    transaction.on_commit(lambda: send_notifications.delay())
    return len(hooks)


# ---- Delivery --------------------------------------------------------------------------------
def _backoff(attempts: int) -> dt.timedelta:
    seconds = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** max(0, attempts - 1))
    # Jitter spreads retries of many rows that failed together (one receiver outage).
    return dt.timedelta(seconds=seconds * random.uniform(0.8, 1.2))


def _due(now: dt.datetime) -> Q:
    # Pending and due, or claimed by a sender whose claim ran out (it crashed mid-delivery).
    return Q(status=NotificationStatus.PENDING, next_attempt_at__lte=now) | Q(
        status=NotificationStatus.SENDING, claimed_until__lt=now
    )


def notification_claim(*, notification_id: int, worker: str, now: dt.datetime | None = None) -> bool:
    """Claim one outbox row with a conditional UPDATE; False when another sender has it or it is done."""
    now = now or timezone.now()
    return bool(
        Notification.objects.filter(_due(now), pk=notification_id).update(
            status=NotificationStatus.SENDING,
            claimed_by=worker,
            claimed_until=now + dt.timedelta(seconds=CLAIM_SECONDS),
            attempts=F("attempts") + 1,
        )
    )


def notification_deliver(*, notification_id: int, worker: str) -> str:
    """Send one claimed row; record sent, retry later (transient) or fail and disable the channel (permanent)."""
    n = Notification.objects.select_related("channel", "webhook").get(pk=notification_id)
    mine = Notification.objects.filter(pk=n.pk, claimed_by=worker, status=NotificationStatus.SENDING)
    channel = n.destination
    if not channel.enabled:
        mine.update(
            status=NotificationStatus.FAILED,
            last_error=_("Channel disabled: %(r)s") % {"r": channel.disabled_reason},
            claimed_until=None,
        )
        return NotificationStatus.FAILED
    try:
        notify.deliver(channel=channel, notification=n)
    except notify.DeliveryError as exc:
        now = timezone.now()
        if exc.permanent:
            mine.update(status=NotificationStatus.FAILED, last_error=str(exc)[:2000], claimed_until=None)
            channel_disable(channel=channel, reason=str(exc))
            return NotificationStatus.FAILED
        if n.attempts >= MAX_ATTEMPTS:
            mine.update(status=NotificationStatus.FAILED, last_error=str(exc)[:2000], claimed_until=None)
            return NotificationStatus.FAILED
        mine.update(
            status=NotificationStatus.PENDING,
            last_error=str(exc)[:2000],
            next_attempt_at=now + _backoff(n.attempts),
            claimed_until=None,
        )
        return NotificationStatus.PENDING
    mine.update(status=NotificationStatus.SENT, sent_at=timezone.now(), last_error="", claimed_until=None)
    return NotificationStatus.SENT


def notifications_send(
    *, worker: str, limit: int = 100, now: dt.datetime | None = None, time_budget_s: float = 60.0
) -> dict[str, int]:
    """Deliver due outbox rows, each claimed once, until the time budget is spent; returns counts by outcome."""
    now = now or timezone.now()
    # Stop claiming before the task's time limit: unclaimed rows wait for the next beat, claimed ones finish.
    deadline = time.monotonic() + time_budget_s
    ids = list(Notification.objects.filter(_due(now)).order_by("next_attempt_at").values_list("pk", flat=True)[:limit])
    counts = {"sent": 0, "pending": 0, "failed": 0, "skipped": 0}
    for pk in ids:
        if time.monotonic() > deadline:
            break
        if not notification_claim(notification_id=pk, worker=worker, now=now):
            counts["skipped"] += 1
            continue
        counts[notification_deliver(notification_id=pk, worker=worker)] += 1
    return counts
