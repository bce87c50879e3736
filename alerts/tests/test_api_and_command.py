"""Alerts API (rules, channels, alerts, pauses, outbox) and the evaluate_alerts command."""

import datetime as dt
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient

from alerts.models import Alert, AlertRule, NotificationChannel
from dataflare_portal.core.models import AuditLogEntry
from dataflare_portal.core.secrets import decrypt_secret

from .factories import EmailChannelFactory, PipelineFactory, RuleFactory, TaskRunFactory, summary

API = "/api/v1/alerts"


@pytest.fixture
def api(admin_user):
    client = APIClient()
    client.force_authenticate(admin_user)
    return client


def make_alert(rule=None, **kw):
    now = timezone.now()
    return Alert.objects.create(
        **{
            "rule": rule or RuleFactory(),
            "severity": "critical",
            "title": "t",
            "fired_at": now,
            "last_evaluated_at": now,
            **kw,
        }
    )


def test_it_creates_and_edits_a_rule_with_validation_naming_the_field(api, db):
    pipeline = PipelineFactory()
    channel = EmailChannelFactory()
    body = {
        "name": "Pipeline failures",
        "kind": "failure_rate",
        "pipeline": pipeline.pk,
        "warning_threshold": 0.1,
        "critical_threshold": 0.3,
        "window_minutes": 10,
        "channels": [channel.pk],
    }
    resp = api.post(f"{API}/rules/", body, format="json")
    assert resp.status_code == 201, resp.content
    rule = AlertRule.objects.get(name="Pipeline failures")
    assert list(rule.channels.all()) == [channel]
    assert AuditLogEntry.objects.filter(action="create", object_type="alerts.alertrule").exists()
    resp = api.patch(f"{API}/rules/{rule.pk}/", {"critical_threshold": 0.05}, format="json")
    assert resp.status_code == 400
    assert resp.json()["error"]["fields"].keys() == {"critical_threshold"}
    resp = api.post(f"{API}/rules/", {**body, "name": "x", "warning_threshold": 3}, format="json")
    assert resp.status_code == 400 and "warning_threshold" in resp.json()["error"]["fields"]
    resp = api.post(f"{API}/rules/", {"name": "b", "kind": "token_budget", "warning_threshold": 0.8}, format="json")
    assert resp.status_code == 400 and "budget_tokens" in resp.json()["error"]["fields"]


def test_channel_secrets_are_write_only_and_private_targets_refused(api, settings, db):
    body = {"name": "hook", "kind": "webhook", "target": "http://127.0.0.1:9/hook", "secret": "abc123"}
    resp = api.post(f"{API}/channels/", body, format="json")
    assert resp.status_code == 201, resp.content
    assert "secret" not in resp.json() and resp.json()["has_secret"] is True
    channel = NotificationChannel.objects.get(name="hook")
    assert decrypt_secret(channel.secret_ciphertext) == "abc123"
    resp = api.patch(f"{API}/channels/{channel.pk}/", {"min_severity": "critical"}, format="json")
    assert resp.status_code == 200
    channel.refresh_from_db()
    assert decrypt_secret(channel.secret_ciphertext) == "abc123"  # kept when not sent
    resp = api.post(f"{API}/channels/", {**body, "name": "inside", "target": "http://10.1.2.3/hook"}, format="json")
    assert resp.status_code == 400 and "target" in resp.json()["error"]["fields"]
    resp = api.post(f"{API}/channels/", {"name": "m", "kind": "email", "target": "nope"}, format="json")
    assert resp.status_code == 400 and "target" in resp.json()["error"]["fields"]


def test_acknowledge_and_resolve_actions(api, admin_user, db):
    alert = make_alert()
    resp = api.post(f"{API}/alerts/{alert.pk}/acknowledge/", {"note": "paging the model team"}, format="json")
    assert resp.status_code == 200 and resp.json()["status"] == "acknowledged"
    assert resp.json()["ack_note"] == "paging the model team"
    resp = api.post(f"{API}/alerts/{alert.pk}/acknowledge/", {}, format="json")
    assert resp.status_code == 400 and "status" in resp.json()["error"]["fields"]
    resp = api.post(f"{API}/alerts/{alert.pk}/resolve/", {"note": "rolled back"}, format="json")
    assert resp.status_code == 200 and resp.json()["status"] == "resolved"
    detail = api.get(f"{API}/alerts/{alert.pk}/").json()
    assert [e["kind"] for e in detail["events"]] == ["acknowledged", "resolved"]
    assert api.post(f"{API}/alerts/999999/resolve/", {}, format="json").status_code == 404


def test_alert_filters_and_list_query_budget(api, db, django_assert_max_num_queries):
    rule = RuleFactory(kind="run_failed", warning_threshold=None, critical_threshold=1)
    for n in range(5):
        make_alert(rule, scope_key=f"run={n}")
    make_alert(severity="warning")
    api.get(f"{API}/alerts/")  # warm-up: the first request creates the built-in operator
    with django_assert_max_num_queries(3):
        resp = api.get(f"{API}/alerts/?severity=critical&kind=run_failed&open=true")
    assert resp.status_code == 200 and len(resp.json()["results"]) == 5
    assert api.get(f"{API}/alerts/?severity=bogus").status_code == 400
    with django_assert_max_num_queries(3):
        assert api.get(f"{API}/rules/").status_code == 200
    with django_assert_max_num_queries(3):
        assert api.get(f"{API}/notifications/").status_code == 200


def test_budget_pause_list_and_lift(api, admin_user, db):
    p = PipelineFactory(runs_paused=True, paused_reason="over budget")
    assert api.get(f"{API}/budget-pauses/").json() == [
        {"type": "pipeline", "id": p.pk, "name": p.name, "paused_reason": "over budget"}
    ]
    resp = api.post(f"{API}/budget-pauses/lift/", {"pipeline": p.pk, "note": "ok'd"}, format="json")
    assert resp.status_code == 200, resp.content
    p.refresh_from_db()
    assert not p.runs_paused
    assert AuditLogEntry.objects.get(action="unpause", object_id=str(p.pk)).actor == admin_user
    resp = api.post(f"{API}/budget-pauses/lift/", {"pipeline": p.pk}, format="json")
    assert resp.status_code == 400 and "scope" in resp.json()["error"]["fields"]
    assert api.post(f"{API}/budget-pauses/lift/", {}, format="json").status_code == 400


def test_roles_viewer_reads_operator_acts_admin_configures(local_auth, viewer_user, operator_user, db):
    alert = make_alert()
    client = APIClient()
    client.force_authenticate(viewer_user)
    assert client.get(f"{API}/alerts/").status_code == 200
    assert client.post(f"{API}/alerts/{alert.pk}/acknowledge/", {}, format="json").status_code == 403
    client.force_authenticate(operator_user)
    assert client.post(f"{API}/alerts/{alert.pk}/acknowledge/", {}, format="json").status_code == 200
    body = {"name": "r", "kind": "run_stuck", "warning_threshold": 30}
    assert client.post(f"{API}/rules/", body, format="json").status_code == 403


def test_evaluate_alerts_prints_what_changed(db):
    p = PipelineFactory()
    RuleFactory(name="Run failed", kind="run_failed", warning_threshold=None, critical_threshold=1, window_minutes=60)
    rate = RuleFactory(name="Failures", kind="failure_rate", pipeline=p)
    run = TaskRunFactory(pipeline=p, failed=True)
    now = timezone.now()
    summary(
        bucket=now - dt.timedelta(minutes=3),
        project_id=p.project_id,
        pipeline_id=p.pk,
        records_in=100,
        records_failed=10,
    )
    out = StringIO()
    call_command("evaluate_alerts", stdout=out)
    text = out.getvalue()
    assert f"fired        critical rule='Run failed' scope=run={run.pk}" in text
    assert "fired        warning  rule='Failures' scope=-" in text
    assert "2 change(s)." in text
    out = StringIO()
    call_command("evaluate_alerts", stdout=out)
    assert out.getvalue().strip() == "0 change(s)."
    type(run).objects.filter(pk=run.pk).update(status="running", finished_at=None)
    out = StringIO()
    call_command("evaluate_alerts", "--rule", "Run failed", stdout=out)
    assert "resolved" in out.getvalue() and "Failures" not in out.getvalue()
    assert rate.alerts.get().status == "firing"
