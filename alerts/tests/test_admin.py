"""Admin pages of the alerts app: default rules visible and editable, channels with a write-only secret."""

from django.utils import timezone

from alerts.models import Alert, AlertRule, NotificationChannel
from dataflare_portal.core.secrets import decrypt_secret

from .factories import RuleFactory


def test_default_rules_are_listed_and_editable(client, keep_defaults, db):
    html = client.get("/alerts/alertrule/").content.decode()
    for name in ("High failure rate", "Run stuck", "Stale rollups", "Daily token budget per project"):
        assert name in html
    rule = AlertRule.objects.get(name="Run stuck")
    page = client.get(f"/alerts/alertrule/{rule.pk}/change/")
    assert page.status_code == 200
    form = {
        "name": rule.name,
        "kind": rule.kind,
        "enabled": "on",
        "warning_threshold": "45",
        "critical_threshold": "120",
        "window_minutes": "15",
        "min_samples": "0",
        "group_by": "",
    }
    response = client.post(f"/alerts/alertrule/{rule.pk}/change/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    rule.refresh_from_db()
    assert (rule.warning_threshold, rule.critical_threshold) == (45, 120)
    bad = client.post(f"/alerts/alertrule/{rule.pk}/change/", {**form, "critical_threshold": "10"})
    assert bad.status_code == 200 and "at or above the warning threshold" in bad.content.decode()


def test_a_webhook_channel_is_added_with_its_secret_encrypted(client, db):
    form = {
        "name": "hook",
        "kind": "webhook",
        "target": "http://127.0.0.1:8099/h",
        "secret": "xyz-123",
        "min_severity": "warning",
        "enabled": "on",
    }
    assert client.post("/alerts/notificationchannel/add/", form).status_code == 302
    channel = NotificationChannel.objects.get()
    assert decrypt_secret(channel.secret_ciphertext) == "xyz-123"
    assert "xyz-123" not in client.get(f"/alerts/notificationchannel/{channel.pk}/change/").content.decode()
    refused = client.post("/alerts/notificationchannel/add/", {**form, "name": "x", "target": "http://10.0.0.8/"})
    assert refused.status_code == 200 and "private address" in refused.content.decode()


def test_alert_admin_actions(client, db):
    now = timezone.now()
    alert = Alert.objects.create(
        rule=RuleFactory(), severity="critical", title="t", fired_at=now, last_evaluated_at=now
    )
    assert client.get("/alerts/alert/").status_code == 200
    client.post("/alerts/alert/", {"action": "acknowledge_alerts", "_selected_action": [alert.pk]})
    alert.refresh_from_db()
    assert alert.status == "acknowledged"
    client.post("/alerts/alert/", {"action": "resolve_alerts", "_selected_action": [alert.pk]})
    alert.refresh_from_db()
    assert alert.status == "resolved"
    assert client.get(f"/alerts/alert/{alert.pk}/change/").status_code == 200
    assert client.get("/alerts/notification/").status_code == 200
