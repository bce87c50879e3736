"""Gateway keys through the API and the admin: shown once, hashed at rest, roles, audit, hostile input; and the
metrics key dimension (rollups and the dashboard API filter by key)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import pytest
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from catalog.tests.factories import ProjectFactory
from dataflare_portal.core.models import AuditLogEntry
from gateway import services
from gateway.models import GatewayKey
from metrics.models import MetricsSummary
from metrics.services import metrics_rollup, token_usage_record
from pipelines.tests.factories import ModelConfigFactory

pytestmark = pytest.mark.django_db


def _api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_operator_creates_a_key_shown_once_hashed_at_rest_and_audited_without_it(local_auth, operator_user):
    project = ProjectFactory()
    ModelConfigFactory(name="llm")
    api = _api(operator_user)
    created = api.post(
        "/api/v1/gateway/keys/",
        {"project": project.pk, "name": "notebook", "allowed_models": ["llm"], "token_budget": 1000},
        format="json",
    )
    assert created.status_code == 201, created.content
    text = created.json()["key"]
    assert text.startswith("dfk_") and len(text) > 40
    key = GatewayKey.objects.get(pk=created.json()["id"])
    assert key.key_hash == hashlib.sha256(text.encode()).hexdigest()
    assert text not in json.dumps(list(GatewayKey.objects.values()), default=str)
    for url in ("/api/v1/gateway/keys/", f"/api/v1/gateway/keys/{key.pk}/"):
        body = api.get(url).content.decode()
        assert text not in body and key.key_hash not in body and '"key":' not in body
    entries = AuditLogEntry.objects.filter(object_type="gateway.gatewaykey", object_id=str(key.pk))
    assert entries.count() == 1
    dumped = json.dumps([e.after for e in entries])
    assert text not in dumped and key.key_hash not in dumped and "notebook" in dumped

    revoked = api.post(f"/api/v1/gateway/keys/{key.pk}/revoke/")
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    with pytest.raises(services.GatewayAuthError, match="revoked"):
        services.key_authenticate(f"Bearer {text}")
    assert entries.all().count() == 2


def test_viewer_reads_metadata_but_cannot_create_or_revoke(local_auth, viewer_user):
    project = ProjectFactory()
    key, _text = services.key_create(actor=None, project=project, name="k")
    api = _api(viewer_user)
    assert api.get("/api/v1/gateway/keys/").status_code == 200
    assert api.post("/api/v1/gateway/keys/", {"project": project.pk, "name": "x"}, format="json").status_code == 403
    assert api.post(f"/api/v1/gateway/keys/{key.pk}/revoke/").status_code == 403
    assert api.delete(f"/api/v1/gateway/keys/{key.pk}/").status_code in (403, 405)
    assert GatewayKey.objects.count() == 1 and GatewayKey.objects.get().revoked_at is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "b", "token_budget": -5}, "token_budget"),
        ({"name": "b", "allowed_models": ["no-such-model"]}, "allowed_models"),
        ({"name": "b", "budget_period": "century"}, "budget_period"),
        ({"name": ""}, "name"),
        ({"name": "dup"}, "non_field_errors"),
    ],
)
def test_hostile_key_input_gets_400_naming_the_field_and_writes_nothing(local_auth, admin_user, body, field):
    project = ProjectFactory()
    services.key_create(actor=None, project=project, name="dup")
    before = GatewayKey.objects.count(), AuditLogEntry.objects.count()
    answer = _api(admin_user).post("/api/v1/gateway/keys/", {"project": project.pk, **body}, format="json")
    assert answer.status_code == 400, answer.content
    assert field in json.dumps(answer.json())
    assert (GatewayKey.objects.count(), AuditLogEntry.objects.count()) == before


def test_admin_add_shows_the_key_once_then_never(local_auth, client, operator_user):
    project = ProjectFactory()
    client.force_login(operator_user)
    answer = client.post(
        reverse("admin:gateway_gatewaykey_add"),
        {"project": project.pk, "name": "console", "budget_period": "month"},
    )
    assert answer.status_code == 200, answer.content[:500]
    page = answer.content.decode()
    assert "Copy this key now; it will not be shown again." in page
    key = GatewayKey.objects.get(name="console")
    secret = page.split('id="gateway-key-secret"', 1)[1].split(">", 1)[1].split("<", 1)[0]
    assert hashlib.sha256(secret.encode()).hexdigest() == key.key_hash
    change = client.get(reverse("admin:gateway_gatewaykey_change", args=[key.pk])).content.decode()
    assert secret not in change and key.prefix in change
    listing = client.get(reverse("admin:gateway_gatewaykey_changelist")).content.decode()
    assert secret not in listing


def test_expiry_is_enforced_and_messages_never_repeat_the_key():
    project = ProjectFactory()
    key, text = services.key_create(
        actor=None, project=project, name="k", expires_at=timezone.now() + dt.timedelta(minutes=5)
    )
    assert services.key_authenticate(f"Bearer {text}").pk == key.pk
    with pytest.raises(services.GatewayAuthError) as expired:
        services.key_authenticate(f"Bearer {text}", now=timezone.now() + dt.timedelta(minutes=6))
    assert "expired" in expired.value.message and text not in expired.value.message
    for header in ("", "Basic abc", "Bearer ", "Bearer sk-123", f"Bearer {text}x"):
        with pytest.raises(services.GatewayAuthError) as refused:
            services.key_authenticate(header)
        assert text not in refused.value.message


def test_rollups_keep_the_key_dimension_and_the_metrics_api_filters_by_key(local_auth, viewer_user):
    project = ProjectFactory()
    key, _text = services.key_create(actor=None, project=project, name="k")
    now = timezone.now()
    common = {
        "project_id": project.pk,
        "pipeline_id": None,
        "run_id": None,
        "stage_template": "gateway",
        "model_version": "1",
        "status_code": "OK",
        "requests": 1,
        "records": 1,
        "latency_ms_sum": 5.0,
        "latency_ms_max": 5.0,
    }
    token_usage_record(ts=now, model_name="llm", prompt_tokens=10, completion_tokens=5, gateway_key_id=key.pk, **common)
    token_usage_record(ts=now, model_name="llm", prompt_tokens=100, completion_tokens=50, **common)
    metrics_rollup(now=now + dt.timedelta(minutes=2))
    rows = MetricsSummary.objects.filter(granularity="minute", project_id=project.pk)
    assert {(r.gateway_key_id, r.prompt_tokens) for r in rows} == {(key.pk, 10), (0, 100)}
    window = {
        "start": (now - dt.timedelta(minutes=10)).isoformat(),
        "end": (now + dt.timedelta(minutes=5)).isoformat(),
        "granularity": "minute",
        "project": project.pk,
    }
    api = _api(viewer_user)
    everything = api.get("/api/v1/metrics/tokens/", window).json()["results"]
    assert sum(r["prompt_tokens"] for r in everything) == 110, everything
    answer = api.get("/api/v1/metrics/tokens/", {**window, "gateway_key": key.pk})
    assert answer.status_code == 200, answer.content
    body = answer.json()
    rows = body["results"] if isinstance(body, dict) and "results" in body else body
    assert sum(r["prompt_tokens"] for r in rows) == 10, body


def test_dashboard_shows_gateway_traffic_by_key_and_model_and_filters_by_key(local_auth, client, viewer_user):
    project = ProjectFactory(name="Lab")
    key, _text = services.key_create(actor=None, project=project, name="notebook")
    now = timezone.now()
    for model, tokens in (("llm", 30), ("embedder", 7)):
        token_usage_record(
            ts=now,
            project_id=project.pk,
            pipeline_id=None,
            run_id=None,
            stage_template="gateway",
            model_name=model,
            model_version="1",
            status_code="OK",
            requests=1,
            records=1,
            prompt_tokens=tokens,
            completion_tokens=0,
            latency_ms_sum=3.0,
            latency_ms_max=3.0,
            gateway_key_id=key.pk,
        )
    metrics_rollup(now=now + dt.timedelta(minutes=2))
    client.force_login(viewer_user)
    window = {
        "start": (now - dt.timedelta(minutes=10)).isoformat(),
        "end": (now + dt.timedelta(minutes=5)).isoformat(),
        "granularity": "minute",
    }
    data = client.get(reverse("metrics:dashboard-data"), {**window, "gateway_key": key.pk}).json()
    traces = data["figures"]["gateway"]["data"]
    assert {t["name"]: t["y"] for t in traces} == {"llm:1": [30], "embedder:1": [7]}
    assert traces[0]["x"] == ["Lab / notebook"]
    page = client.get(reverse("metrics:dashboard"), window).content.decode()
    assert 'name="gateway_key"' in page and "Lab / notebook" in page
    other = client.get(reverse("metrics:dashboard-data"), {**window, "gateway_key": key.pk + 1000}).json()
    assert not any(t["y"] for t in other["figures"]["gateway"]["data"] if t.get("y"))


def _asgi_get(path: str, peer: str, headers: dict[str, str] | None = None):
    """One request through the gateway's ASGI app in this process: (status, headers, JSON body)."""
    import asyncio

    from gateway.asgi import gateway_app

    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": (peer, 40000),
    }
    asyncio.run(gateway_app(scope, receive, send))
    head = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    assert int(head["content-length"]) == len(sent[1]["body"])
    return sent[0]["status"], head, json.loads(sent[1]["body"])


def test_the_gateway_edge_refuses_remote_peers_in_none_mode_and_tags_the_request_id(settings):
    settings.AUTH_MODE, settings.AUTH_MODE_NONE_ALLOW_REMOTE = "none", False
    status, head, body = _asgi_get("/v1/models", "10.1.2.3")
    assert status == 403 and body["error"]["code"] == "remote_refused" and len(head["x-request-id"]) == 32
    # From loopback the request goes on to the view (no key here: 401), tagged with the caller's request id.
    status, head, body = _asgi_get("/v1/models", "127.0.0.1", {"X-Request-ID": "abc123"})
    assert status == 401 and body["error"]["code"] == "missing_api_key" and head["x-request-id"] == "abc123"
    assert head["www-authenticate"] == "Bearer"
    # An unsafe request id is replaced, not echoed.
    assert _asgi_get("/v1/models", "127.0.0.1", {"X-Request-ID": "a b\r\n"})[1]["x-request-id"] != "a b\r\n"
    settings.AUTH_MODE = "local"
    assert _asgi_get("/v1/models", "10.1.2.3")[0] == 401


def test_the_gateway_app_routes_like_the_urlconf_and_refuses_in_openai_shape(settings):
    status, _head, body = _asgi_get("/v1/nothing/here", "127.0.0.1")
    assert status == 404 and body["error"]["code"] == "unknown_url" and "/v1/nothing/here" in body["error"]["message"]
    status, head, body = _asgi_get("/v1/chat/completions", "127.0.0.1")
    assert status == 405 and head["allow"] == "POST" and body["error"]["code"] == "method_not_allowed"
    assert _asgi_get("/v1/models/some/model", "127.0.0.1")[0] == 401  # models/<path:model> needs a key too


def test_a_stream_stops_and_closes_its_generator_when_the_client_goes_away():
    """The relay of a stream whose client disconnects is closed (the view then records the call as cancelled)."""
    import asyncio

    from django.http import StreamingHttpResponse

    from gateway.asgi import _send_stream

    closed = []

    async def events():
        try:
            n = 0
            while True:
                n += 1
                yield b'data: {"n": %d}\n\n' % n
                await asyncio.sleep(0)
        finally:
            closed.append(True)

    async def run():
        sent = []
        disconnect = asyncio.Event()

        async def send(message):
            sent.append(message)
            if len(sent) == 4:
                disconnect.set()

        async def receive():
            await disconnect.wait()
            return {"type": "http.disconnect"}

        generator = events()
        response = StreamingHttpResponse(generator, content_type="text/event-stream")
        response.gateway_events = generator
        await asyncio.wait_for(_send_stream(response, send, receive, head_only=False), 10)
        return sent

    sent = asyncio.run(run())
    assert closed == [True]
    assert sent[0]["type"] == "http.response.start" and sent[1]["body"].startswith(b"data: ")
    assert all(m.get("more_body") for m in sent[1:])  # never told the (gone) client the stream ended


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("chat/completions", "not json", None),
        ("chat/completions", [1, 2], None),
        ("chat/completions", {"messages": []}, "model"),
        ("chat/completions", {"model": "llm", "messages": "hi"}, "messages"),
        ("chat/completions", {"model": "llm", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ("chat/completions", {"model": "llm", "messages": [{"role": "system", "content": "x"}]}, "messages"),
        ("chat/completions", {"model": "llm", "stream": "yes", "messages": []}, "stream"),
        ("chat/completions", {"model": "llm", "stream_options": [], "messages": []}, "stream_options"),
        ("completions", {"model": "llm", "prompt": [1, 2]}, "prompt"),
        ("embeddings", {"model": "llm", "input": "x", "stream": True}, "stream"),
    ],
)
def test_hostile_gateway_bodies_get_400_naming_the_field_and_are_not_metered(client, path, body, param):
    from gateway.models import GatewayRequest
    from metrics.models import TokenUsage

    ModelConfigFactory(name="llm")
    key, text = services.key_create(actor=None, project=ProjectFactory(), name="k")
    content = body if isinstance(body, str) else json.dumps(body)
    answer = client.post(
        f"/v1/{path}", content, content_type="application/json", headers={"Authorization": f"Bearer {text}"}
    )
    assert answer.status_code == 400, answer.content
    error = json.loads(answer.content)["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]
    assert (TokenUsage.objects.count(), GatewayRequest.objects.filter(key=key).count()) == (0, 1)
