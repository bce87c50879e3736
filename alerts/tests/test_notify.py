"""Delivery: signed webhooks to a real local HTTP server, email, claims, retries and disabled channels."""

import datetime as dt
import http.server
import json
import threading

import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from django.utils import timezone

from alerts import notify, services
from alerts.models import Notification, NotificationChannel
from conftest import free_port
from dataflare_portal.core.secrets import decrypt_secret

from .factories import RuleFactory, summary

SECRET = "s3cret-shared-with-the-receiver"


class Receiver:
    """A real HTTP server on loopback that records requests and answers with a chosen status."""

    def __init__(self):
        self.requests: list[dict] = []
        self.status = 200
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"headers": dict(self.headers), "body": body, "path": self.path})
                self.send_response(receiver.status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/dataflare?team=data"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def webhook(receiver, admin_user):
    channel = NotificationChannel(name="hook", kind="webhook", target=receiver.url)
    return services.channel_save(actor=admin_user, channel=channel, secret=SECRET)


def fire(pipeline, channels, now):
    rule = RuleFactory(kind="failure_rate", pipeline=pipeline, channels=channels)
    summary(
        bucket=now - dt.timedelta(minutes=2),
        project_id=pipeline.project_id,
        pipeline_id=pipeline.pk,
        records_in=100,
        records_failed=50,
    )
    return services.rule_evaluate(rule=rule, now=now)


def test_the_secret_is_stored_encrypted_and_never_in_the_audit_log(webhook):
    from dataflare_portal.core.models import AuditLogEntry

    assert SECRET not in webhook.secret_ciphertext
    assert decrypt_secret(webhook.secret_ciphertext) == SECRET
    entry = AuditLogEntry.objects.get(object_type="alerts.notificationchannel", object_id=str(webhook.pk))
    assert SECRET not in json.dumps(entry.after) and "secret_ciphertext" not in entry.after


def test_a_webhook_is_signed_over_its_body_and_verified_by_a_real_server(pipeline, webhook, receiver, now):
    [change] = fire(pipeline, [webhook], now)
    counts = services.notifications_send(worker="w1")
    assert counts["sent"] == 1
    [req] = receiver.requests
    assert req["path"] == "/hooks/dataflare?team=data"
    headers = req["headers"]
    assert notify.verify(SECRET, req["body"], headers[notify.SIGNATURE_HEADER])
    assert not notify.verify("another-secret", req["body"], headers[notify.SIGNATURE_HEADER])
    assert abs(int(headers[notify.TIMESTAMP_HEADER]) - timezone.now().timestamp()) < 300
    body = json.loads(req["body"])
    assert body["event"] == "fired" and body["alert"]["id"] == change.alert_id
    assert body["alert"]["severity"] == "critical" and body["delivery"] == int(headers[notify.DELIVERY_HEADER])
    n = Notification.objects.get()
    assert (n.status, n.attempts, n.claimed_until) == ("sent", 1, None)
    # Sent rows are never sent again.
    assert services.notifications_send(worker="w2") == {"sent": 0, "pending": 0, "failed": 0, "skipped": 0}
    assert len(receiver.requests) == 1


def test_a_row_is_claimed_by_one_sender_only(pipeline, webhook, now):
    fire(pipeline, [webhook], now)
    n = Notification.objects.get()
    assert services.notification_claim(notification_id=n.pk, worker="a")
    assert not services.notification_claim(notification_id=n.pk, worker="b")
    n.refresh_from_db()
    assert n.claimed_by == "a" and n.status == "sending"
    # A sender that died: once its claim runs out another sender may take the row.
    later = timezone.now() + dt.timedelta(seconds=services.CLAIM_SECONDS + 1)
    assert services.notification_claim(notification_id=n.pk, worker="b", now=later)


def test_a_server_error_is_retried_with_backoff(pipeline, webhook, receiver, now):
    receiver.status = 503
    fire(pipeline, [webhook], now)
    before = timezone.now()
    assert services.notifications_send(worker="w1")["pending"] == 1
    n = Notification.objects.get()
    assert n.status == "pending" and n.attempts == 1 and "503" in n.last_error
    assert n.next_attempt_at >= before + dt.timedelta(seconds=services.BACKOFF_BASE_SECONDS * 0.8)
    first_delay = n.next_attempt_at - before
    # Not due yet: nothing happens.
    assert services.notifications_send(worker="w1")["pending"] == 0
    assert services.notifications_send(worker="w1", now=n.next_attempt_at)["pending"] == 1
    n.refresh_from_db()
    assert n.attempts == 2 and n.next_attempt_at - timezone.now() > first_delay
    webhook.refresh_from_db()
    assert webhook.enabled
    receiver.status = 204
    assert services.notifications_send(worker="w1", now=n.next_attempt_at)["sent"] == 1
    assert len(receiver.requests) == 3


def test_a_client_error_disables_the_channel_with_the_reason(pipeline, webhook, receiver, now):
    receiver.status = 410
    fire(pipeline, [webhook], now)
    assert services.notifications_send(worker="w1")["failed"] == 1
    webhook.refresh_from_db()
    assert not webhook.enabled and "410" in webhook.disabled_reason
    assert Notification.objects.get().status == "failed"


def test_a_receiver_that_is_down_is_transient(pipeline, admin_user, now):
    channel = services.channel_save(
        actor=admin_user,
        channel=NotificationChannel(name="down", kind="webhook", target=f"http://127.0.0.1:{free_port()}/"),
        secret=SECRET,
    )
    fire(pipeline, [channel], now)
    assert services.notifications_send(worker="w1")["pending"] == 1
    channel.refresh_from_db()
    assert channel.enabled


def test_webhooks_to_private_addresses_are_refused(settings, admin_user, pipeline, webhook, now):
    with pytest.raises(ValidationError) as err:
        services.channel_save(
            actor=admin_user,
            channel=NotificationChannel(name="meta", kind="webhook", target="http://169.254.169.254/latest"),
            secret=SECRET,
        )
    assert "target" in err.value.message_dict
    # Allowed when saved, refused at send time once the host is no longer allowed: permanent.
    fire(pipeline, [webhook], now)
    settings.ALLOWED_PRIVATE_HOSTS = []
    assert services.notifications_send(worker="w1")["failed"] == 1
    webhook.refresh_from_db()
    assert not webhook.enabled and "loopback" in webhook.disabled_reason


def test_a_webhook_needs_a_secret(admin_user, receiver):
    with pytest.raises(ValidationError) as err:
        services.channel_save(
            actor=admin_user, channel=NotificationChannel(name="x", kind="webhook", target=receiver.url)
        )
    assert "secret" in err.value.message_dict


def test_email_is_sent_and_an_invalid_address_disables_the_channel(pipeline, channel, now):
    fire(pipeline, [channel], now)
    assert services.notifications_send(worker="w1")["sent"] == 1
    [msg] = mail.outbox
    assert msg.to == [channel.target] and "[CRITICAL]" in msg.subject and "/alerts/" in msg.body
    # An address that went bad after it was saved: permanent.
    NotificationChannel.objects.filter(pk=channel.pk).update(target="not an address")
    summary(
        bucket=now - dt.timedelta(minutes=1),
        project_id=pipeline.project_id,
        pipeline_id=pipeline.pk,
        records_in=10000,
        records_failed=0,
    )
    from alerts.models import AlertRule

    services.rule_evaluate(rule=AlertRule.objects.get(), now=now)  # resolves -> one more row
    assert services.notifications_send(worker="w1")["failed"] == 1
    channel.refresh_from_db()
    assert not channel.enabled and "not a valid email" in channel.disabled_reason


def test_disabled_channels_get_no_new_rows(pipeline, channel, now):
    NotificationChannel.objects.filter(pk=channel.pk).update(enabled=False, disabled_reason="410")
    fire(pipeline, [channel], now)
    assert Notification.objects.count() == 0


def test_a_rebound_webhook_name_never_reaches_the_private_address(settings, monkeypatch, receiver):
    """The webhook dials the address the guard approved; the Host header keeps the name."""
    import socket

    from modelserver.testing import RebindingResolver, RecordingListener

    settings.ALLOWED_PRIVATE_HOSTS = ["127.0.0.1"]  # 127.0.0.2 is a private address here
    dns = RebindingResolver()
    dns.script("hooks.rebind.test", "127.0.0.1", "127.0.0.2")
    monkeypatch.setattr(socket, "getaddrinfo", dns)
    port = receiver.server.server_port
    private = RecordingListener("127.0.0.2", port, upstream=("127.0.0.1", port))
    try:
        url = f"http://hooks.rebind.test:{port}/hook"
        assert notify.webhook_post(url=url, secret=SECRET, body=b"{}") == 200
        assert receiver.requests[-1]["headers"]["Host"] == f"hooks.rebind.test:{port}"
        with pytest.raises(notify.DeliveryError) as err:
            notify.webhook_post(url=url, secret=SECRET, body=b"{}")
        assert err.value.permanent and "127.0.0.2" in str(err.value)
        assert private.connections == 0 and len(receiver.requests) == 1
    finally:
        private.close()
