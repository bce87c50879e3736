import socket
import threading
from datetime import timedelta

import pytest
from django.utils import timezone

from dataflare_portal.core.models import Duty


@pytest.mark.django_db
def test_it_reports_process_up(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response["X-Request-ID"]


@pytest.mark.django_db
def test_it_reports_database_readiness_and_components_to_a_signed_in_user(client):
    response = client.get("/readyz")  # AUTH_MODE=none: the built-in operator
    body = response.json()
    assert response.status_code == 200
    assert body["ready"] is True
    assert body["checks"]["database"]["ok"] is True
    assert body["components"]["broker"]["ok"] is True, body
    assert set(body["components"]) >= {"broker", "model_services", "scheduler", "duties", "workers"}


@pytest.mark.django_db
def test_it_stays_ready_but_degraded_when_the_broker_is_unreachable(client):
    from dataflare_portal.celery import app

    original = app.conf.broker_url
    app.conf.broker_url = "redis://127.0.0.1:1/0"
    try:
        response = client.get("/readyz")
    finally:
        app.conf.broker_url = original
    # The web serves without the doorbell: messages go out when it is back (the reaper re-sends).
    assert response.status_code == 200
    body = response.json()
    assert body["components"]["broker"]["ok"] is False
    assert body["status"] == "degraded" and "broker" in body["degraded"]


@pytest.mark.django_db
def test_anonymous_readyz_says_only_ready_or_not(client, local_auth, outsider_user, viewer_user):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    # Staff without a role group see no more than anonymous callers.
    client.force_login(outsider_user)
    assert client.get("/readyz").json() == {"status": "ok"}
    client.force_login(viewer_user)
    assert "components" in client.get("/readyz").json()


class _Listener:
    """A TCP listener that counts the connections made to it (a user-entered model endpoint)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.accepted = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def _loop(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.mark.django_db
def test_readyz_never_dials_a_model_endpoint_and_a_down_model_service_only_degrades(
    client, local_auth, viewer_user, settings
):
    from pipelines.tests.model_fixtures import model_config

    settings.ALLOWED_PRIVATE_HOSTS = ["127.0.0.1"]
    listener = _Listener()
    try:
        config = model_config(listener.address, name="down-model")
        config.full_clean()
        config.save()
        config.last_tested_at = timezone.now()
        config.last_test_result = {"ok": False, "health": {"error": "UNAVAILABLE"}}
        config.save()
        anonymous = client.get("/readyz")
        client.force_login(viewer_user)
        detailed = client.get("/readyz")
    finally:
        listener.close()
    assert listener.accepted == 0, "readiness dialled a user-entered endpoint"
    assert anonymous.status_code == 200 and anonymous.json() == {"status": "ok"}
    assert detailed.status_code == 200
    body = detailed.json()
    services = body["components"]["model_services"]
    assert services["ok"] is False and "down-model" in services["detail"]
    assert services["services"]["down-model"]["last_test_ok"] is False
    assert "model_services" in body["degraded"]


@pytest.mark.django_db
def test_a_stale_beat_heartbeat_is_named_in_readyz_and_the_banner(client, settings):
    from dataflare_portal.core import duties

    now = timezone.now()
    # Never seen: reported, but no banner (a portal whose beat never started is not "a process died").
    body = client.get("/readyz").json()
    assert body["components"]["scheduler"]["state"] == "never_seen"
    Duty.objects.create(name=duties.SCHEDULER, last_finished_at=now, last_by="beat host:1")
    body = client.get("/readyz").json()
    assert body["components"]["scheduler"]["ok"] is True
    assert "scheduler" not in body["degraded"]
    assert "celery beat" not in client.get("/").content.decode()
    stale = duties.stale_seconds()
    Duty.objects.filter(name=duties.SCHEDULER).update(last_finished_at=now - timedelta(seconds=stale + 5))
    response = client.get("/readyz")
    assert response.status_code == 200  # degraded, never unready
    body = response.json()
    assert body["components"]["scheduler"]["state"] == "dead"
    assert "celery beat" in body["components"]["scheduler"]["detail"]
    assert "scheduler" in body["degraded"]
    page = client.get("/workers/").content.decode()
    assert "df-scheduler-dead" in page
    # The banner of every page names the dead scheduler, and the overdue reaper.
    home = client.get("/").content.decode()
    assert "celery beat" in home and "reaper" in home


@pytest.mark.django_db
def test_it_echoes_a_safe_request_id(client):
    response = client.get("/healthz", HTTP_X_REQUEST_ID="abc-123")
    assert response["X-Request-ID"] == "abc-123"
    response = client.get("/healthz", HTTP_X_REQUEST_ID="bad id\nwith newline")
    assert response["X-Request-ID"] != "bad id\nwith newline"


@pytest.mark.django_db
@pytest.mark.parametrize("path, body", [("/healthz", {"status": "ok"}), ("/readyz", {"status": "ok"})])
def test_a_probe_on_the_pods_own_address_gets_the_anonymous_answer(client, settings, path, body):
    # What kubelet sends: plain HTTP to the pod IP, which is not an allowed host, behind the HTTPS redirect.
    settings.AUTH_MODE = "local"
    settings.ALLOWED_HOSTS = ["portal.example.com"]
    settings.SECURE_SSL_REDIRECT = True
    response = client.get(path, HTTP_HOST="10.42.0.17:8000")
    assert response.status_code == 200
    assert response.json() == body  # ready or not, nothing more: no component names for an anonymous probe
    # Every other path still validates the host and redirects to HTTPS.
    assert client.get("/admin/", HTTP_HOST="10.42.0.17:8000").status_code == 400
    assert client.get("/admin/", HTTP_HOST="portal.example.com").status_code == 301


@pytest.mark.django_db
def test_a_probe_path_with_a_session_takes_the_normal_way(client, settings):
    settings.AUTH_MODE = "local"
    settings.ALLOWED_HOSTS = ["portal.example.com"]
    settings.SECURE_SSL_REDIRECT = True
    client.cookies[settings.SESSION_COOKIE_NAME] = "anything"
    assert client.get("/readyz", HTTP_HOST="10.42.0.17:8000").status_code == 400
    assert client.get("/readyz", HTTP_HOST="portal.example.com").status_code == 301
