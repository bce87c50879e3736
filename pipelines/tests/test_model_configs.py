"""Model configs: endpoint mapping, the test service, admin (list, action, button), API, readiness, worker hook."""

from __future__ import annotations

import json

import grpc
import pytest
from rest_framework.test import APIClient

from conftest import free_port
from dataflare_portal.core.models import AuditLogEntry
from modelclient import BreakerOpen, SqliteBreakerStore
from pipelines.model_configs import (
    breaker_store_default,
    model_config_endpoint,
    model_config_test,
    model_services_status,
    on_worker_start,
)
from pipelines.models import ModelConfig
from pipelines.tests.model_fixtures import model_client_private, model_config, model_server  # noqa: F401

pytestmark = pytest.mark.django_db
API = "/api/v1/pipelines/model-configs"


def saved(address: str, **overrides) -> ModelConfig:
    mc = model_config(address, **overrides)
    mc.full_clean()
    mc.save()
    return mc


# ---- ModelConfig -> client endpoint -------------------------------------------------------------------
def test_endpoint_carries_policies_and_keeps_portal_keys_out_of_request_parameters():
    mc = model_config(
        "10.0.0.5:8001",
        model_version="3",
        parameters={"prompt_template": "{text}", "input_name": "INPUT0", "temperature": 0.2, "tls_server_name": "m"},
        deadline_ms=1500,
        max_attempts=6,
        backoff_base_ms=20,
        backoff_max_ms=400,
        max_in_flight=5,
        breaker_failure_threshold=7,
        breaker_reset_seconds=45,
        tls=True,
        tls_ca_cert="-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----\n",
    )
    ep = model_config_endpoint(mc)
    assert (ep.endpoint, ep.model_name, ep.model_version) == ("10.0.0.5:8001", "annotator", "3")
    assert ep.input_name == "INPUT0"
    assert dict(ep.parameters) == {"temperature": 0.2}
    assert ep.deadline_s == 1.5 and ep.max_in_flight == 5
    assert (ep.retry.max_attempts, ep.retry.backoff_base_s, ep.retry.backoff_max_s) == (6, 0.02, 0.4)
    assert (ep.breaker.failure_threshold, ep.breaker.reset_timeout_s) == (7, 45.0)
    assert ep.tls.root_certs.startswith(b"-----BEGIN") and ep.tls.server_name == "m"
    assert ep.key == "10.0.0.5:8001/annotator@3"
    assert model_config_endpoint(model_config("h:1")).tls is None


def test_the_default_breaker_store_is_shared_sqlite_without_redis_and_redis_with_it(settings, tmp_path):
    settings.REDIS_URL = ""
    settings.DATA_DIR = tmp_path
    store = breaker_store_default()
    assert isinstance(store, SqliteBreakerStore) and store.path == str(tmp_path / "breaker.sqlite3")
    settings.REDIS_URL = "redis://127.0.0.1:6379/9"
    assert type(breaker_store_default()).__name__ == "RedisBreakerStore"


def test_worker_start_hook_installs_the_shared_store(settings, tmp_path):
    import modelclient

    settings.REDIS_URL = ""
    settings.DATA_DIR = tmp_path
    try:
        on_worker_start(sender=None)
        assert isinstance(modelclient.default_client().breaker_store, SqliteBreakerStore)
        assert (tmp_path / "breaker.sqlite3").exists()
    finally:
        modelclient.configure(breaker_store=None)


# ---- the test service ---------------------------------------------------------------------------------
def test_model_config_test_reports_health_latency_and_the_answer(model_server, admin_user, model_client_private):  # noqa: F811
    mc = saved(model_server.address)
    result = model_config_test(config=mc, actor=admin_user, sample_text="Cats purr. Dogs bark loudly at night.")
    assert result["ok"] is True
    assert result["health"]["live"] and result["health"]["ready"] and result["health"]["model_ready"]
    assert result["health"]["latency_ms"] > 0 and result["inference"]["latency_ms"] > 0
    assert result["inference"]["output"]["annotation"]["summary"]
    assert result["inference"]["prompt_tokens"] > 0
    assert result["health"]["model"]["name"] == "annotator"
    mc.refresh_from_db()
    assert mc.last_tested_at is not None and mc.last_test_result["ok"] is True
    entry = AuditLogEntry.objects.filter(object_type="pipelines.modelconfig", object_id=str(mc.pk)).latest("id")
    assert entry.actor == admin_user and "passed" in entry.message


def test_model_config_test_ignores_an_open_shared_breaker(model_server, admin_user, model_client_private):  # noqa: F811
    mc = saved(model_server.address, breaker_failure_threshold=1)
    breaker = model_client_private.breaker(model_config_endpoint(mc))
    breaker.record_failure()
    with pytest.raises(BreakerOpen):
        breaker.before_call()
    # The operator sees what the server does now, plus the shared breaker's state.
    result = model_config_test(config=mc, actor=admin_user)
    assert result["ok"] is True and result["breaker"]["state"] == "open"


def test_model_config_test_reports_a_dead_endpoint_and_a_failing_model(model_server, admin_user, model_client_private):  # noqa: F811
    dead = saved(f"127.0.0.1:{free_port()}", name="dead")
    result = model_config_test(config=dead, actor=admin_user)
    assert result["ok"] is False and "UNAVAILABLE" in result["health"]["error"]
    assert result["inference"]["code"] == "SKIPPED"
    dead.refresh_from_db()
    assert dead.last_test_result["ok"] is False

    model_server.faults.configure(error_rate=1.0, error_code=grpc.StatusCode.INTERNAL)
    failing = saved(model_server.address, name="failing")
    result = model_config_test(config=failing, actor=admin_user)
    assert result["health"]["ready"] and result["ok"] is False
    assert result["inference"]["code"] == "INTERNAL"
    assert model_server.faults.calls == 1  # one attempt: the test does not retry


def test_model_config_test_refuses_an_endpoint_outside_the_allowed_hosts(admin_user, settings, model_client_private):  # noqa: F811
    settings.ALLOWED_PRIVATE_HOSTS = []
    mc = saved("127.0.0.1:9", name="guarded")
    result = model_config_test(config=mc, actor=admin_user)
    assert result["ok"] is False and "ALLOWED_PRIVATE_HOSTS" in result["health"]["error"]


# ---- admin ---------------------------------------------------------------------------------------------
@pytest.fixture
def browser(client, admin_user):
    client.force_login(admin_user)
    return client


def test_changelist_shows_endpoint_model_version_and_last_test_badge(browser, model_server, admin_user):  # noqa: F811
    mc = saved(model_server.address, model_version="1")
    saved("127.0.0.1:2", name="never")
    model_config_test(config=mc, actor=admin_user)
    page = browser.get("/pipelines/modelconfig/").content.decode()
    assert model_server.address in page and "annotator" in page
    assert "df-badge-ok" in page and "passed" in page and "never tested" in page
    assert browser.get("/pipelines/modelconfig/?q=annotator").status_code == 200
    # Autocomplete (used by other admins' model_config fields) answers searches.
    auto = browser.get(
        "/autocomplete/",
        {"app_label": "pipelines", "model_name": "pipelinestage", "field_name": "model_config", "term": "never"},
    )
    assert auto.status_code == 200
    assert [r["text"] for r in auto.json()["results"]] == [str(ModelConfig.objects.get(name="never"))]


def test_admin_test_action_runs_the_test_and_reports_latency_and_answer(browser, model_server):  # noqa: F811
    mc = saved(model_server.address)
    resp = browser.post("/pipelines/modelconfig/", {"action": "test_configs", "_selected_action": [mc.pk]}, follow=True)
    text = resp.content.decode()
    assert resp.status_code == 200 and "passed: health" in text and "summary" in text
    mc.refresh_from_db()
    assert mc.last_test_result["ok"] is True


def test_change_page_has_a_test_button_and_the_test_page_runs_it(browser, model_server):  # noqa: F811
    mc = saved(model_server.address)
    change = browser.get(f"/pipelines/modelconfig/{mc.pk}/change/").content.decode()
    test_url = f"/pipelines/modelconfig/{mc.pk}/test/"
    assert test_url in change
    assert "not been tested" in browser.get(test_url).content.decode()
    resp = browser.post(test_url, {"sample_text": "Rain falls on the quiet town. Children play outside."})
    page = resp.content.decode()
    assert resp.status_code == 200
    assert 'id="df-inference-latency"' in page and 'id="df-test-answer"' in page
    assert "quiet town" in page  # the summary of the sample comes back in the answer
    mc.refresh_from_db()
    assert mc.last_test_result["inference"]["input"].startswith("Rain falls")


def test_viewers_see_results_but_cannot_run_tests(client, viewer_user, model_server, local_auth):  # noqa: F811
    mc = saved(model_server.address)
    client.force_login(viewer_user)
    url = f"/pipelines/modelconfig/{mc.pk}/test/"
    assert client.get(url).status_code == 200
    assert client.post(url, {}).status_code == 403
    assert model_server.faults.calls == 0


def test_admin_form_refuses_a_malformed_endpoint_and_a_bad_prompt_template(browser):
    form = {
        "name": "bad",
        "endpoint": "no-port-here",
        "model_name": "m",
        "model_version": "",
        "parameters": json.dumps({"prompt_template": "{text.upper}"}),
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
    page = browser.post("/pipelines/modelconfig/add/", form).content.decode()
    assert "host:port" in page and "prompt_template" in page
    assert not ModelConfig.objects.filter(name="bad").exists()


# ---- API -----------------------------------------------------------------------------------------------
@pytest.fixture
def api(admin_user):
    client = APIClient()
    client.force_authenticate(admin_user)
    return client


def body(address: str, **overrides) -> dict:
    data = {"name": "api-model", "endpoint": address, "model_name": "annotator", "parameters": {"max_tokens": 16}}
    data.update(overrides)
    return data


def test_api_crud_is_audited_and_the_test_action_answers(api, model_server, model_client_private):  # noqa: F811
    resp = api.post(f"{API}/", body(model_server.address), format="json")
    assert resp.status_code == 201, resp.content
    pk = resp.json()["id"]
    entries = AuditLogEntry.objects.filter(object_type="pipelines.modelconfig", object_id=str(pk))
    assert entries.filter(action="create").exists()
    resp = api.post(f"{API}/{pk}/test/", {"sample_text": "Bees make honey. Honey is sweet."}, format="json")
    assert resp.status_code == 200
    result = resp.json()
    assert result["ok"] is True and result["inference"]["latency_ms"] > 0
    assert "Bees make honey" in result["inference"]["output"]["annotation"]["summary"]
    detail = api.get(f"{API}/{pk}/").json()
    assert detail["last_test_result"]["ok"] is True and detail["last_tested_at"]
    listing = api.get(f"{API}/?brief=1").json()
    assert listing["results"][0] == {
        "id": pk,
        "name": "api-model",
        "endpoint": model_server.address,
        "model_name": "annotator",
        "model_version": "",
    }
    # last_test_result is read-only through CRUD.
    api.patch(f"{API}/{pk}/", {"last_test_result": {"ok": False}}, format="json")
    assert ModelConfig.objects.get(pk=pk).last_test_result["ok"] is True


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"endpoint": "nohostport"}, "endpoint"),
        ({"endpoint": "169.254.169.254:80"}, "endpoint"),
        ({"parameters": {"prompt_template": "{0}"}}, "parameters"),
        ({"parameters": [1, 2]}, "parameters"),
        ({"deadline_ms": 0}, "deadline_ms"),
        ({"max_attempts": 99}, "max_attempts"),
    ],
)
def test_api_bad_input_gets_a_400_naming_the_field(api, overrides, field):
    resp = api.post(f"{API}/", body("127.0.0.1:8001", **overrides), format="json")
    assert resp.status_code == 400, resp.content
    assert field in resp.json()["error"]["fields"]
    assert not ModelConfig.objects.exists()


def test_api_test_action_is_for_operators_not_viewers(model_server, operator_user, viewer_user, local_auth):  # noqa: F811
    mc = saved(model_server.address)
    client = APIClient()
    client.force_authenticate(viewer_user)
    assert client.get(f"{API}/{mc.pk}/").status_code == 200
    assert client.post(f"{API}/{mc.pk}/test/", {}, format="json").status_code == 403
    assert client.patch(f"{API}/{mc.pk}/", {"batch_size": 3}, format="json").status_code == 403
    client.force_authenticate(operator_user)
    assert client.post(f"{API}/{mc.pk}/test/", {}, format="json").status_code == 200
    assert client.patch(f"{API}/{mc.pk}/", {"batch_size": 3}, format="json").status_code == 403  # admins configure
    bad = client.post(f"{API}/{mc.pk}/test/", {"sample_text": "x" * 10_001}, format="json")
    assert bad.status_code == 400 and "sample_text" in bad.json()["error"]["fields"]


def test_api_list_query_budget(api, django_assert_max_num_queries):
    for i in range(5):
        saved(f"127.0.0.1:{8000 + i}", name=f"m{i}")
    api.get(f"{API}/")  # the first request creates the built-in operator user (AUTH_MODE=none)
    with django_assert_max_num_queries(3):
        assert len(api.get(f"{API}/").json()["results"]) == 5


# ---- readiness -------------------------------------------------------------------------------------------
def test_model_services_status_reports_recorded_state_and_never_makes_the_portal_unready(
    model_server,  # noqa: F811
    client,
    model_client_private,  # noqa: F811
):
    assert model_services_status()["ok"] is True and model_services_status()["detail"] == "no model configs"
    good = saved(model_server.address, name="a")
    dead = saved(f"127.0.0.1:{free_port()}", name="dead", breaker_failure_threshold=1)
    status = model_services_status()
    assert status["ok"] is True and set(status["services"]) == {"a", "dead"}
    # What the workers recorded: the shared breaker of the dead endpoint opened.
    breaker = model_client_private.breaker(model_config_endpoint(dead))
    breaker.record_failure()
    status = model_services_status()
    assert status["ok"] is False and "dead" in status["detail"] and "a," not in status["detail"]
    assert status["services"]["dead"]["breaker"]["state"] == "open"
    assert status["services"]["a"]["breaker"]["state"] == "closed"
    resp = client.get("/readyz")
    assert resp.status_code == 200  # degraded, never unready
    assert resp.json()["components"]["model_services"]["ok"] is False
    assert good.pk


# ---- TLS ---------------------------------------------------------------------------------------------------
def test_a_tls_model_config_passes_its_test_and_a_wrong_ca_fails_it(admin_user, model_client_private):  # noqa: F811
    from modelclient.tests.conftest import tls_material as make_tls  # session fixture body, called directly
    from modelserver.server import TlsFiles
    from modelserver.testing import running_server

    material = make_tls.__wrapped__()
    other = make_tls.__wrapped__()
    with running_server(tls=TlsFiles(material["server_cert"], material["server_key"])) as handle:
        good = saved(handle.address, name="tls-good", tls=True, tls_ca_cert=material["ca"].decode())
        result = model_config_test(config=good, actor=admin_user)
        assert result["ok"] is True, result
        wrong = saved(handle.address, name="tls-wrong", tls=True, tls_ca_cert=other["ca"].decode())
        result = model_config_test(config=wrong, actor=admin_user)
        assert result["ok"] is False and result["health"]["error"].startswith("UNAVAILABLE")
        plain = saved(handle.address, name="tls-off")
        assert model_config_test(config=plain, actor=admin_user)["ok"] is False


@pytest.mark.parametrize(
    "template",
    ["{text.__class__.__init__.__globals__}", "{meta[0]}", "{text!r}", "{text:>99999999}", "{text:{n}}", "x\ud800"],
)
def test_an_unsafe_prompt_template_is_refused_at_save_with_its_path(api, template):
    """Issue 11: every door that saves a model config (API, admin form, services via full_clean) refuses it."""
    from django.core.exceptions import ValidationError

    # json.dumps escapes a lone surrogate ("\\ud800") as a hostile client would send it.
    raw = json.dumps(body("127.0.0.1:8001", parameters={"prompt_template": template}))
    resp = api.post(f"{API}/", raw, content_type="application/json")
    assert resp.status_code == 400, resp.content
    assert "$.parameters.prompt_template" in json.dumps(resp.json()["error"]["fields"]["parameters"])
    config = ModelConfig(
        name="direct", endpoint="127.0.0.1:8001", model_name="m", parameters={"prompt_template": template}
    )
    with pytest.raises(ValidationError) as info:
        config.full_clean()
    assert "$.parameters.prompt_template" in str(info.value)
    assert not ModelConfig.objects.exists()
