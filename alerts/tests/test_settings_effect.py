"""The alert system settings take effect: default window, failure-rate thresholds, notification cooldown."""

import datetime as dt

import pytest
from rest_framework.test import APIClient

from alerts import services
from alerts.choices import AlertEventKind
from alerts.models import AlertRule, Notification
from dataflare_portal.core.config import config_set

from .factories import AlertFactory, RuleFactory


@pytest.mark.parametrize("minutes", [15, 45])
def test_a_new_rule_starts_with_the_default_window(admin_user, minutes):
    config_set(key="alert_default_window_minutes", value=minutes, actor=admin_user)
    rule = AlertRule(name="r", kind="run_stuck", warning_threshold=30)
    assert rule.window_minutes == minutes
    api = APIClient()
    api.force_authenticate(admin_user)
    body = {"name": "api-rule", "kind": "run_stuck", "warning_threshold": 30}
    response = api.post("/api/v1/alerts/rules/", body, format="json")
    assert response.status_code == 201, response.content
    assert AlertRule.objects.get(name="api-rule").window_minutes == minutes


def test_a_failure_rate_rule_without_thresholds_takes_the_percent_settings(admin_user):
    config_set(key="alert_error_rate_warning_pct", value=2.5, actor=admin_user)
    config_set(key="alert_error_rate_critical_pct", value=40, actor=admin_user)
    rule = AlertRule(name="fr", kind="failure_rate")
    rule.full_clean()
    assert (rule.warning_threshold, rule.critical_threshold) == (0.025, 0.4)
    # Thresholds the operator gives win; another kind gets no failure-rate defaults.
    own = AlertRule(name="own", kind="failure_rate", warning_threshold=0.1)
    own.full_clean()
    assert (own.warning_threshold, own.critical_threshold) == (0.1, None)
    with pytest.raises(Exception, match="warning threshold"):
        AlertRule(name="stuck", kind="run_stuck").full_clean()


def _transition(alert, kind, severity, at, channels):
    alert.severity = severity
    alert.save()
    return services._record_transition(alert=alert, kind=kind, severity=severity, now=at, channels=channels)


@pytest.mark.parametrize(("cooldown", "sent"), [(30, ["fired", "escalated", "resolved"]), (0, None)])
def test_the_cooldown_holds_back_flapping_notifications(admin_user, channel, now, cooldown, sent):
    config_set(key="alert_default_cooldown_minutes", value=cooldown, actor=admin_user)
    alert = AlertFactory(rule=RuleFactory(channels=[channel]), severity="warning")
    steps = [
        (AlertEventKind.FIRED, "warning", 0),
        (AlertEventKind.ESCALATED, "critical", 2),  # worse than anything notified: always sent
        (AlertEventKind.DEESCALATED, "warning", 4),  # held back within the cooldown
        (AlertEventKind.ESCALATED, "critical", 6),  # already notified at this severity: held back
        (AlertEventKind.RESOLVED, "warning", 8),  # an end is always sent
    ]
    for kind, severity, minute in steps:
        _transition(alert, kind, severity, now + dt.timedelta(minutes=minute), [channel])
    events = list(Notification.objects.order_by("alert_event__at").values_list("event", flat=True))
    assert events == (sent or [k for k, _, _ in steps])
    # After the cooldown a de-escalation is sent again.
    _transition(alert, AlertEventKind.DEESCALATED, "warning", now + dt.timedelta(minutes=60), [channel])
    assert Notification.objects.filter(event="deescalated").exists()
