"""DNS rebinding: a model endpoint's name first resolves to an allowed address, then to a private one.

The test controls the only resolver the guard uses (socket.getaddrinfo, scripted by RebindingResolver) and
the name `model.rebind.test` exists nowhere else — gRPC's own resolver cannot resolve it. So a call that
reaches the allowed server proves the portal dialled the address its guard approved, and the recording
listener on the "private" address 127.0.0.2 (a real model server behind it; only 127.0.0.1 is on the
allow-list here) proves no connection ever reached the private address: from the model-config test,
template validation probes, inference calls, pooled reconnects and readiness.
"""

from __future__ import annotations

import socket

import pytest
from rest_framework.test import APIClient

from modelclient import ModelError
from modelclient.channels import default_pool
from modelserver.testing import RebindingResolver, rebinding_servers
from pipelines.model_configs import (
    model_client,
    model_config_endpoint,
    model_config_test,
    model_server_ready,
    model_services_ready,
)
from pipelines.models import ModelConfig
from pipelines.stagekinds import StageContext, registry
from pipelines.templates_io import template_export_body
from pipelines.tests.model_fixtures import model_client_private, model_config  # noqa: F401
from pipelines.validation import template_validate

from .factories import PipelineFactory

pytestmark = pytest.mark.django_db
NAME = "model.rebind.test"
PRIVATE = "127.0.0.2"


@pytest.fixture
def dns(monkeypatch, settings):
    """The guard's resolver, scripted by the test; 127.0.0.1 is allowed, 127.0.0.2 is a private address."""
    settings.ALLOWED_PRIVATE_HOSTS = ["127.0.0.1"]
    resolver = RebindingResolver()
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    yield resolver
    default_pool().close()


@pytest.fixture
def servers():
    with rebinding_servers() as pair:
        yield pair


def rebinding_config(port: int, **overrides) -> ModelConfig:
    mc = model_config(f"{NAME}:{port}", **overrides)
    mc.save()
    return mc


def test_model_config_test_dials_the_approved_address_and_refuses_the_rebound_one(dns, servers, admin_user):
    public, private = servers
    dns.script(NAME, "127.0.0.1", PRIVATE)
    mc = rebinding_config(public.port)

    first = model_config_test(config=mc, actor=admin_user)
    assert first["ok"] is True, first
    assert first["inference"]["output"]
    # One resolution for the whole test action (health and inference dial the same approved address).
    assert dns.queries == [NAME]

    second = model_config_test(config=mc, actor=admin_user)
    assert second["ok"] is False
    assert PRIVATE in second["health"]["error"] and "ALLOWED_PRIVATE_HOSTS" in second["health"]["error"]
    assert private.connections == 0


def test_validation_probes_go_through_the_guard(dns, servers):
    public, private = servers
    dns.script(NAME, "127.0.0.1", PRIVATE)
    mc = rebinding_config(public.port, name="probed")
    body = template_export_body(PipelineFactory())
    body["stages"].insert(3, {"id": "score", "kind": "model_inference", "config": {}, "model_config": mc.name})

    assert not [w for w in template_validate(body, probe=True).warnings if w.stage == "score"]
    warnings = [w for w in template_validate(body, probe=True).warnings if w.stage == "score"]
    assert [w.code for w in warnings] == ["model_server_unreachable"]
    assert PRIVATE in warnings[0].message
    assert private.connections == 0


def test_inference_and_pooled_reconnects_never_reach_the_rebound_address(dns, servers, model_client_private):  # noqa: F811
    public, private = servers
    dns.script(NAME, "127.0.0.1", PRIVATE)
    mc = rebinding_config(public.port, max_attempts=3)
    kind = registry.get("model_inference")
    ctx = StageContext(config={}, stage_key="infer", model_config=mc)
    records = [{"text": "the quick brown fox"}, {"text": "jumps over"}]

    assert len(kind.process(records, ctx).records) == 2
    # The name now answers 127.0.0.2; the pooled channel stays pinned to the approved address.
    assert len(kind.process(records, ctx).records) == 2
    assert dns.queries == [NAME]
    # The approved server goes away: the pool reconnects only to the pinned address, checks the name
    # again after UNAVAILABLE, and refuses the new answer instead of following it.
    public.stop(grace=0)
    with pytest.raises(ModelError) as exc:
        kind.process(records, ctx)
    assert exc.value.code == "ENDPOINT_REFUSED" and PRIVATE in exc.value.message
    assert model_client().channels.target(model_config_endpoint(mc)) is None
    assert private.connections == 0


def test_readiness_checks_the_name_every_time(dns, servers):
    public, private = servers
    dns.script(NAME, "127.0.0.1", PRIVATE)
    rebinding_config(public.port)

    assert model_services_ready()[0] is True
    ok, detail = model_services_ready()
    assert ok is False and "ENDPOINT_REFUSED" in detail
    assert model_server_ready(ModelConfig(endpoint=f"{NAME}:{public.port}", model_name="x")) == (
        False,
        "ENDPOINT_REFUSED",
    )
    assert private.connections == 0


def test_saving_or_deleting_a_config_closes_its_pooled_channel(dns, servers, admin_user, model_client_private):  # noqa: F811
    public, _private = servers
    dns.script(NAME, "127.0.0.1")
    mc = rebinding_config(public.port)
    pool = model_client().channels
    channel = pool.get(model_config_endpoint(mc))

    api = APIClient()
    api.force_authenticate(admin_user)
    resp = api.patch(
        f"/api/v1/pipelines/model-configs/{mc.pk}/", {"endpoint": f"other.rebind.test:{public.port}"}, format="json"
    )
    assert resp.status_code == 400  # other.rebind.test does not resolve: refused, nothing saved
    assert pool.get(model_config_endpoint(mc)) is channel

    dns.script("other.rebind.test", "127.0.0.1")
    resp = api.patch(
        f"/api/v1/pipelines/model-configs/{mc.pk}/", {"endpoint": f"other.rebind.test:{public.port}"}, format="json"
    )
    assert resp.status_code == 200, resp.content
    with pytest.raises(ValueError, match="closed"):
        channel.unary_unary("/inference.GRPCInferenceService/ServerLive")(b"", timeout=1)

    mc.refresh_from_db()
    channel = pool.get(model_config_endpoint(mc))
    assert api.delete(f"/api/v1/pipelines/model-configs/{mc.pk}/").status_code == 204
    with pytest.raises(ValueError, match="closed"):
        channel.unary_unary("/inference.GRPCInferenceService/ServerLive")(b"", timeout=1)


@pytest.mark.parametrize(
    "endpoint", ["dns://127.0.0.1:53/model.rebind.test:8001", "unix:/var/run/docker.sock", "ipv4:10.0.0.1:8001"]
)
def test_endpoints_that_gRPC_would_read_as_a_uri_are_refused_at_save(dns, admin_user, endpoint):
    api = APIClient()
    api.force_authenticate(admin_user)
    resp = api.post(
        "/api/v1/pipelines/model-configs/",
        {"name": "uri", "endpoint": endpoint, "model_name": "annotator"},
        format="json",
    )
    assert resp.status_code == 400 and "endpoint" in resp.json()["error"]["fields"], resp.content
    assert not ModelConfig.objects.filter(name="uri").exists()
