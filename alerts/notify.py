"""Senders of alert notifications: a signed JSON webhook and email, with errors classified at the edge.

Delivery is at least once (a sender that dies after sending is retried), so every webhook carries
the notification id in X-DataFlare-Delivery for receivers to drop duplicates.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import smtplib
import ssl
import time
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.utils.translation import gettext as _

from dataflare_portal.core.netguard import Approved, EndpointRefused, EndpointUnresolvable, approve_url, connect_tcp
from dataflare_portal.core.secrets import SecretDecryptError, decrypt_secret

from .choices import ChannelKind

SIGNATURE_HEADER = "X-DataFlare-Signature"
TIMESTAMP_HEADER = "X-DataFlare-Timestamp"
EVENT_HEADER = "X-DataFlare-Event"
DELIVERY_HEADER = "X-DataFlare-Delivery"
WEBHOOK_TIMEOUT_S = 10.0
# Statuses a receiver may answer while it is overloaded or restarting: try again later.
TRANSIENT_HTTP = {408, 425, 429}


class DeliveryError(Exception):
    """A failed delivery; permanent ones disable the channel (Healthchecks' TransportError(permanent=...))."""

    def __init__(self, message: str, *, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


def sign(secret: str, body: bytes) -> str:
    """The signature header value: HMAC-SHA256 of the exact request body under the channel's secret."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    """What a receiver does: recompute the signature over the body and compare in constant time."""
    return hmac.compare_digest(sign(secret, body), header or "")


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to an address the SSRF guard approved, so a second DNS answer cannot redirect us inside."""

    def __init__(self, approved: Approved, *, timeout):
        super().__init__(approved.host, approved.port, timeout=timeout)
        self._approved = approved

    def connect(self):
        self.sock = connect_tcp(self._approved, self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """Like _PinnedHTTPConnection; the certificate is checked against the host name, not the address."""

    def __init__(self, approved: Approved, *, timeout):
        super().__init__(approved.host, approved.port, timeout=timeout, context=ssl.create_default_context())
        self._approved = approved

    def connect(self):
        sock = connect_tcp(self._approved, self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def webhook_post(*, url: str, secret: str, body: bytes, headers: dict | None = None, timeout=WEBHOOK_TIMEOUT_S) -> int:
    """POST a JSON body, signed; returns the status or raises DeliveryError (transient or permanent)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DeliveryError(_("The webhook URL must be http:// or https:// with a host."), permanent=True)
    try:
        approved = approve_url(url, field="target")
    except EndpointUnresolvable as exc:
        raise DeliveryError(str(exc)) from exc  # DNS trouble passes; a private address does not
    except EndpointRefused as exc:
        raise DeliveryError(str(exc), permanent=True) from exc
    timestamp = str(int(time.time()))
    all_headers = {
        "Content-Type": "application/json",
        "User-Agent": "DataFlare-Portal-Alerts/1",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(secret, body),
        **(headers or {}),
    }
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    cls = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
    conn = cls(approved, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers=all_headers)
        response = conn.getresponse()
        response.read(65536)
        status = response.status
    except ssl.SSLCertVerificationError as exc:
        raise DeliveryError(_("TLS certificate rejected: %(e)s") % {"e": exc}, permanent=True) from exc
    except (TimeoutError, OSError, http.client.HTTPException) as exc:
        raise DeliveryError(_("Cannot reach the webhook: %(e)s") % {"e": exc or type(exc).__name__}) from exc
    finally:
        conn.close()
    if 200 <= status < 300:
        return status
    message = _("The webhook answered HTTP %(status)s.") % {"status": status}
    if status >= 500 or status in TRANSIENT_HTTP:
        raise DeliveryError(message)
    if 300 <= status < 400:
        raise DeliveryError(message + " " + _("Redirects are not followed; enter the final URL."), permanent=True)
    raise DeliveryError(message, permanent=True)


def _email_text(payload: dict) -> tuple[str, str]:
    alert = payload.get("alert", {})
    event = payload.get("event", "")
    subject = f"[DataFlare] [{alert.get('severity', '').upper()}] {event}: {alert.get('title', '')}"[:200]
    lines = [
        alert.get("title", ""),
        "",
        f"{_('Event')}: {event}",
        f"{_('Rule')}: {alert.get('rule')} ({alert.get('kind')})",
        f"{_('Scope')}: {alert.get('scope') or '-'}",
        f"{_('Severity')}: {alert.get('severity')}",
        f"{_('Value')}: {alert.get('value')}",
        f"{_('Fired at')}: {alert.get('fired_at')}",
    ]
    evidence = alert.get("evidence") or {}
    for name, link in (evidence.get("links") or {}).items():
        lines.append(f"{name}: {link}")
    if alert.get("url"):
        lines += ["", alert["url"]]
    return subject, "\n".join(lines)


def email_send(*, address: str, payload: dict) -> None:
    """Send one alert email; a refused or invalid address is permanent, a server hiccup transient."""
    try:
        validate_email(address)
    except ValidationError as exc:
        raise DeliveryError(_("%(a)s is not a valid email address.") % {"a": address}, permanent=True) from exc
    subject, body = _email_text(payload)
    try:
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [address], fail_silently=False)
    except smtplib.SMTPRecipientsRefused as exc:
        raise DeliveryError(
            _("The mail server refused %(a)s: %(e)s") % {"a": address, "e": exc}, permanent=True
        ) from exc
    except smtplib.SMTPResponseException as exc:
        permanent = 500 <= exc.smtp_code < 600 and not isinstance(exc, smtplib.SMTPSenderRefused)
        raise DeliveryError(_("The mail server answered %(c)s.") % {"c": exc.smtp_code}, permanent=permanent) from exc
    except (smtplib.SMTPException, OSError) as exc:
        raise DeliveryError(_("Cannot send email: %(e)s") % {"e": exc}) from exc


def deliver(*, channel, notification) -> None:
    """Deliver one outbox row to its channel (raises DeliveryError)."""
    payload = {**notification.payload, "delivery": notification.pk, "channel": channel.name}
    if channel.kind == ChannelKind.WEBHOOK:
        try:
            secret = decrypt_secret(channel.secret_ciphertext)
        except SecretDecryptError as exc:
            raise DeliveryError(str(exc), permanent=True) from exc
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True, default=str).encode("utf-8")
        webhook_post(
            url=channel.target,
            secret=secret,
            body=body,
            headers={EVENT_HEADER: notification.event, DELIVERY_HEADER: str(notification.pk)},
        )
    elif channel.kind == ChannelKind.EMAIL:
        email_send(address=channel.target, payload=payload)
    else:
        raise DeliveryError(_("Unknown channel kind %(k)s.") % {"k": channel.kind}, permanent=True)
