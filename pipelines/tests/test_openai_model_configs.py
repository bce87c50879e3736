"""OpenAI-compatible model configs: the API key never leaves encrypted storage; endpoint checks; test action; SSRF.

The reference server's HTTP face (requiring a bearer key) is the real service on loopback. The key must appear
in no API answer, admin page, audit entry, stored test result or database column other than its ciphertext.
"""

from __future__ import annotations

import socket

import pytest
from django.db import connection
from rest_framework.test import APIClient

from dataflare_portal.core.models import AuditLogEntry
from modelclient import EndpointRefused
from modelclient.openai_http import default_http_pool
from modelserver.testing import RebindingResolver, RecordingListener, running_server
from pipelines.choices import ModelProtocol
from pipelines.model_configs import model_config_endpoint, model_config_test
from pipelines.models import ModelConfig
from pipelines.stagekinds import StageContext, registry
from pipelines.tests.model_fixtures import model_client_private, model_config  # noqa: F401

pytestmark = pytest.mark.django_db
API = "/api/v1/pipelines/model-configs"
KEY = "sk-very-secret-4711"


@pytest.fixture
def face():
    with running_server(http_port=0, api_key=KEY) as handle:
        yield handle


@pytest.fixture
def api(admin_user):
    client = APIClient()
    client.force_authenticate(admin_user)
    return client


def body(base_url: str, **overrides) -> dict:
    data = {
        "name": "llm",
        "protocol": "openai",
        "openai_api": "chat",
        "endpoint": base_url,
        "model_name": "annotator",
        "api_key": KEY,
        "parameters": {"response_format": {"type": "json_object"}},
    }
    data.update(overrides)
    return data


def all_column_text() -> str:
    """Every column of every model-config row and audit entry, as the database holds them."""
    with connection.cursor() as cur:
        cur.execute("SELECT * FROM pipelines_modelconfig")
        rows = [str(r) for r in cur.fetchall()]
    rows += [str(r) for r in AuditLogEntry.objects.values_list()]
    return "\n".join(rows)


def test_the_api_stores_the_key_encrypted_and_never_returns_it(api, face, model_client_private):  # noqa: F811
    resp = api.post(f"{API}/", body(face.http.base_url), format="json")
    assert resp.status_code == 201, resp.content
    pk = resp.json()["id"]
    assert resp.json()["has_api_key"] is True and "api_key" not in resp.json()
    mc = ModelConfig.objects.get(pk=pk)
    assert mc.api_key() == KEY and KEY not in mc.api_key_ciphertext

    tested = api.post(f"{API}/{pk}/test/", {"sample_text": "Software engineers ship a new computer chip."})
    assert tested.status_code == 200 and tested.json()["ok"] is True, tested.json()
    assert tested.json()["inference"]["output"]["annotation"]["topic"] == "technology"
    # Omitting the key keeps it; the answers never carry it.
    assert api.patch(f"{API}/{pk}/", {"model_name": "token-counter"}, format="json").status_code == 200
    assert ModelConfig.objects.get(pk=pk).api_key() == KEY
    answers = [api.get(f"{API}/").content, api.get(f"{API}/{pk}/").content, tested.content]
    assert all(KEY.encode() not in a for a in answers)
    assert KEY not in all_column_text()
    assert AuditLogEntry.objects.filter(object_type="pipelines.modelconfig", object_id=str(pk)).count() >= 3

    # An empty key removes it, and the server then refuses the test.
    assert api.patch(f"{API}/{pk}/", {"api_key": ""}, format="json").json()["has_api_key"] is False
    failed = api.post(f"{API}/{pk}/test/", {}).json()
    assert failed["ok"] is False and "UNAUTHENTICATED" in (failed["health"]["error"] + str(failed["inference"]))


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"endpoint": "127.0.0.1:8000"}, "endpoint"),  # host:port is the gRPC form
        ({"endpoint": "http://user:pw@127.0.0.1:8000/v1"}, "endpoint"),
        ({"endpoint": "http://10.20.30.40:8000/v1"}, "endpoint"),  # private, not allow-listed
        ({"endpoint": "http://169.254.169.254/v1"}, "endpoint"),
        ({"protocol": "kserve_v2", "endpoint": "127.0.0.1:8001"}, "api_key"),  # gRPC takes no key
        ({"protocol": "smtp"}, "protocol"),
        ({"openai_api": "images"}, "openai_api"),
    ],
)
def test_api_bad_input_gets_a_400_naming_the_field(api, overrides, field):
    resp = api.post(f"{API}/", body("http://127.0.0.1:8000/v1", **overrides), format="json")
    assert resp.status_code == 400, resp.content
    assert field in resp.json()["error"]["fields"], resp.json()
    assert not ModelConfig.objects.exists()


def test_the_admin_form_takes_the_key_write_only(client, admin_user, face):
    client.force_login(admin_user)
    form = {
        "name": "admin-llm",
        "protocol": "openai",
        "openai_api": "completions",
        "endpoint": face.http.base_url,
        "model_name": "token-counter",
        "model_version": "",
        "parameters": "{}",
        "api_key": KEY,
        "tls_ca_cert": "",
        "batch_size": 8,
        "deadline_ms": 1000,
        "max_attempts": 3,
        "backoff_base_ms": 10,
        "backoff_max_ms": 100,
        "max_in_flight": 2,
        "breaker_failure_threshold": 3,
        "breaker_reset_seconds": 10,
    }
    resp = client.post("/pipelines/modelconfig/add/", form)
    assert resp.status_code == 302, resp.content.decode()[:3000]
    mc = ModelConfig.objects.get(name="admin-llm")
    assert (mc.protocol, mc.openai_api, mc.api_key()) == ("openai", "completions", KEY)
    page = client.get(f"/pipelines/modelconfig/{mc.pk}/change/").content.decode()
    assert KEY not in page and "Stored (encrypted)" in page and "df-openai" in page
    # A blank key keeps the stored one; "remove" clears it.
    client.post(f"/pipelines/modelconfig/{mc.pk}/change/", {**form, "api_key": ""})
    assert ModelConfig.objects.get(pk=mc.pk).api_key() == KEY
    client.post(f"/pipelines/modelconfig/{mc.pk}/change/", {**form, "api_key": "", "clear_api_key": "on"})
    assert ModelConfig.objects.get(pk=mc.pk).api_key_ciphertext == ""
    # The admin's test button runs against the server (which now refuses: no key), and the log shows no key.
    client.post(f"/pipelines/modelconfig/{mc.pk}/change/", form)
    test_page = client.post(f"/pipelines/modelconfig/{mc.pk}/test/", {"sample_text": "one two three"})
    assert test_page.status_code == 200 and KEY not in test_page.content.decode()
    assert ModelConfig.objects.get(pk=mc.pk).last_test_result["ok"] is True
    assert KEY not in all_column_text()
    # Switching to KServe V2 drops the key.
    form_grpc = {**form, "protocol": "kserve_v2", "endpoint": "127.0.0.1:8001", "api_key": ""}
    assert client.post(f"/pipelines/modelconfig/{mc.pk}/change/", form_grpc).status_code == 302
    assert ModelConfig.objects.get(pk=mc.pk).api_key_ciphertext == ""


def test_the_admin_form_refuses_a_key_on_a_grpc_config_and_a_url_that_is_not_one(client, admin_user):
    client.force_login(admin_user)
    base = {"name": "x", "model_name": "m", "parameters": "{}", "batch_size": 8, "deadline_ms": 1000}
    base.update(max_attempts=3, backoff_base_ms=10, backoff_max_ms=100, max_in_flight=2)
    base.update(breaker_failure_threshold=3, breaker_reset_seconds=10, openai_api="chat")
    page = client.post(
        "/pipelines/modelconfig/add/", {**base, "protocol": "kserve_v2", "endpoint": "127.0.0.1:8001", "api_key": "k"}
    ).content.decode()
    assert "takes no API key" in page
    page = client.post("/pipelines/modelconfig/add/", {**base, "protocol": "openai", "endpoint": "ftp://h/v1"})
    assert "is not an http(s) base URL" in page.content.decode()
    assert not ModelConfig.objects.exists()


# ---- the SSRF guard at call time ----------------------------------------------------------------------------
NAME = "llm.rebind.test"
PRIVATE = "127.0.0.2"


@pytest.fixture
def dns(monkeypatch, settings):
    settings.ALLOWED_PRIVATE_HOSTS = ["127.0.0.1"]
    resolver = RebindingResolver()
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    yield resolver
    default_http_pool().close()


def test_a_name_that_now_points_at_a_private_address_is_refused_and_never_dialled(
    dns,
    face,
    admin_user,
    model_client_private,  # noqa: F811
):
    listener = RecordingListener(PRIVATE, face.http.port)
    try:
        dns.script(NAME, "127.0.0.1", PRIVATE)
        mc = model_config(
            f"http://{NAME}:{face.http.port}/v1", protocol=ModelProtocol.OPENAI, model_name="token-counter"
        )
        mc.api_key_set(KEY)
        mc.save()
        # The first answer is approved: the call dials 127.0.0.1 (the name exists nowhere else).
        first = model_config_test(config=mc, actor=admin_user)
        assert first["ok"] is True, first
        # The name now answers a private address: the test action and the stage refuse it, nothing dials it.
        second = model_config_test(config=mc, actor=admin_user)
        assert second["ok"] is False and PRIVATE in second["health"]["error"]
        kind = registry.get("model_inference")
        ctx = StageContext(config={}, stage_key="infer", model_config=mc)
        with pytest.raises(EndpointRefused) as info:
            kind.process([{"text": "a b"}], ctx)
        assert PRIVATE in info.value.message and KEY not in info.value.message
        assert listener.connections == 0
        assert model_config_endpoint(mc).api_key == KEY
    finally:
        listener.close()
