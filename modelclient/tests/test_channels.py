"""The channel pool dials only addresses its resolver approved, and keeps no channel past its config or its check.

The resolver here is a script the test controls and the names (`*.rebind.test`) exist nowhere else: a call
that reaches a server proves the channel dialled the resolver's answer, not a second resolution of its own.
"""

from __future__ import annotations

import pytest

from modelclient import (
    EndpointRefused,
    EndpointUnresolved,
    ModelClient,
    ModelEndpoint,
    PermanentModelError,
    RetryPolicy,
    TlsConfig,
    TransientModelError,
)
from modelclient.channels import ChannelPool, grpc_target, split_endpoint
from modelserver.server import TlsFiles
from modelserver.testing import rebinding_servers, running_server

PRIVATE = "127.0.0.2"


class Script:
    """(host, port) -> approved addresses from a list of answers (the last repeats); 127.0.0.2 is refused."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.queries = 0

    def __call__(self, host: str, port: int) -> list[str]:
        assert host == "model.rebind.test"
        self.queries += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if answer == "nxdomain":
            raise EndpointUnresolved(f"{host} cannot be resolved")
        if answer == PRIVATE:
            raise EndpointRefused(f"{host} resolves to {answer}, a loopback address")
        return [answer]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def endpoint(port: int, **kw) -> ModelEndpoint:
    kw.setdefault("deadline_s", 5.0)
    kw.setdefault("retry", RetryPolicy(max_attempts=3, backoff_base_s=0.001, backoff_max_s=0.01))
    return ModelEndpoint(f"model.rebind.test:{port}", "token-counter", **kw)


def test_it_dials_the_approved_ip_literal_and_never_the_name() -> None:
    with rebinding_servers() as (public, private):
        resolver = Script("127.0.0.1")
        pool = ChannelPool(resolver=resolver)
        client = ModelClient(channel_pool=pool)
        try:
            result = client.infer_texts(endpoint(public.port), ["two words"])
            assert result.outputs == [{"token_count": 2}]
            assert pool.target(endpoint(public.port)) == f"ipv4:127.0.0.1:{public.port}"
            assert resolver.queries == 1 and public.faults.calls == 1
            assert private.connections == 0
        finally:
            pool.close()


def test_a_rebound_name_is_refused_on_recheck_and_reconnect_and_nothing_reaches_the_private_address() -> None:
    clock = Clock()
    with rebinding_servers() as (public, private):
        resolver = Script("127.0.0.1", PRIVATE)
        pool = ChannelPool(resolver=resolver, recheck_s=30, clock=clock)
        client = ModelClient(channel_pool=pool)
        config = endpoint(public.port)
        try:
            client.infer_texts(config, ["a"])
            # The name now answers 127.0.0.2. Within the recheck interval the pinned channel keeps the
            # approved address; no second resolution happens.
            client.infer_texts(config, ["b"])
            assert resolver.queries == 1 and public.faults.calls == 2
            # The approved server goes away: gRPC reconnects only to the pinned IP, then the pool checks
            # the name again after UNAVAILABLE and refuses the new answer.
            public.stop(grace=0)
            with pytest.raises(EndpointRefused) as exc:
                client.infer_texts(config, ["c"])
            assert exc.value.code == "ENDPOINT_REFUSED" and PRIVATE in exc.value.message
            assert pool.target(config) is None  # the refused name's channel is closed, not kept
            with pytest.raises(EndpointRefused):
                client.infer_texts(config, ["d"])
            assert private.connections == 0
        finally:
            pool.close()


def test_the_name_is_checked_again_after_the_recheck_interval() -> None:
    clock = Clock()
    with rebinding_servers() as (public, private):
        resolver = Script("127.0.0.1", "127.0.0.1", PRIVATE)
        pool = ChannelPool(resolver=resolver, recheck_s=30, clock=clock)
        client = ModelClient(channel_pool=pool)
        config = endpoint(public.port)
        try:
            client.infer_texts(config, ["a"])
            channel = pool.get(config)
            clock.now += 31
            client.infer_texts(config, ["b"])  # same answer: the same channel, checked again
            assert resolver.queries == 2 and pool.get(config) is channel
            clock.now += 31
            with pytest.raises(EndpointRefused):
                client.infer_texts(config, ["c"])  # the server is up, but its name is no longer approved
            with pytest.raises(ValueError, match="closed"):
                channel.unary_unary("/inference.GRPCInferenceService/ServerLive")(b"", timeout=1)
            assert public.faults.calls == 2 and private.connections == 0
        finally:
            pool.close()


def test_a_reordered_round_robin_answer_keeps_the_channel() -> None:
    clock = Clock()
    with running_server() as server:
        answers = [["127.0.0.1", "127.0.0.3"], ["127.0.0.3", "127.0.0.1"], ["127.0.0.3"]]
        pool = ChannelPool(resolver=lambda host, port: answers.pop(0), recheck_s=30, clock=clock)
        config = ModelEndpoint(f"rr.rebind.test:{server.port}", "token-counter", config_id="9")
        channel = pool.get(config)
        assert pool.target(config) == f"ipv4:127.0.0.1:{server.port},127.0.0.3:{server.port}"
        clock.now += 31
        assert pool.get(config) is channel  # same addresses, other order
        clock.now += 31
        assert pool.get(config) is not channel  # 127.0.0.1 is no longer in the answer
        assert pool.target(config) == f"ipv4:127.0.0.3:{server.port}"
        pool.close()


def test_dns_trouble_keeps_the_address_approved_before() -> None:
    clock = Clock()
    with rebinding_servers() as (public, private):
        resolver = Script("127.0.0.1", "nxdomain")
        pool = ChannelPool(resolver=resolver, recheck_s=30, clock=clock)
        client = ModelClient(channel_pool=pool)
        try:
            client.infer_texts(endpoint(public.port), ["a"])
            clock.now += 31
            assert client.infer_texts(endpoint(public.port), ["b"]).outputs == [{"token_count": 1}]
        finally:
            pool.close()
    fresh = ChannelPool(resolver=Script("nxdomain"))
    with pytest.raises(TransientModelError) as exc:
        ModelClient(channel_pool=fresh).infer_texts(endpoint(1, retry=RetryPolicy(max_attempts=2)), ["x"])
    assert exc.value.code == "UNAVAILABLE" and exc.value.stats.status_counts == {"UNAVAILABLE": 2}


def test_channels_are_kept_per_config_and_closed_when_it_changes_or_is_discarded() -> None:
    clock = Clock()
    with running_server() as a, running_server() as b:
        pool = ChannelPool(resolver=lambda host, port: ["127.0.0.1"], retire_grace_s=60, clock=clock)
        client = ModelClient(channel_pool=pool)
        first = ModelEndpoint(f"a.rebind.test:{a.port}", "token-counter", config_id="7")
        client.infer_texts(first, ["x"])
        old = pool.get(first)
        # The config now points elsewhere (another process saved it): its old channel is retired...
        moved = ModelEndpoint(f"b.rebind.test:{b.port}", "token-counter", config_id="7")
        client.infer_texts(moved, ["x"])
        assert len(pool._slots) == 1 and pool.target(moved) == f"ipv4:127.0.0.1:{b.port}"
        # ...and closed once calls that were running on it have had their grace period.
        clock.now += 61
        client.infer_texts(moved, ["y"])
        with pytest.raises(ValueError, match="closed"):
            old.unary_unary("/inference.GRPCInferenceService/ServerLive")(b"", timeout=1)
        current = pool.get(moved)
        assert pool.discard("7") is True and pool.target(moved) is None
        with pytest.raises(ValueError, match="closed"):
            current.unary_unary("/inference.GRPCInferenceService/ServerLive")(b"", timeout=1)
        assert (a.faults.calls, b.faults.calls) == (1, 2)
        pool.close()


def test_idle_channels_are_closed() -> None:
    clock = Clock()
    with running_server() as server:
        pool = ChannelPool(resolver=lambda host, port: ["127.0.0.1"], idle_close_s=600, clock=clock)
        idle = ModelEndpoint(f"idle.rebind.test:{server.port}", "token-counter", config_id="1")
        busy = ModelEndpoint(f"busy.rebind.test:{server.port}", "token-counter", config_id="2")
        channel = pool.get(idle)
        clock.now += 601
        pool.get(busy)
        assert pool.target(idle) is None
        with pytest.raises(ValueError, match="closed"):
            channel.unary_unary("/inference.GRPCInferenceService/ServerLive")(b"", timeout=1)
        pool.close()


def test_tls_checks_the_certificate_against_the_host_name_while_dialling_the_ip(tls_for_rebind_name) -> None:
    files = TlsFiles(tls_for_rebind_name["server_cert"], tls_for_rebind_name["server_key"])
    one_try = RetryPolicy(max_attempts=1)
    with running_server(tls=files) as server:
        pool = ChannelPool(resolver=Script("127.0.0.1"))
        client = ModelClient(channel_pool=pool)
        try:
            tls = TlsConfig(tls_for_rebind_name["ca"])
            assert client.infer_texts(endpoint(server.port, tls=tls), ["secure words"]).outputs == [{"token_count": 2}]
            # A configured server name is what the certificate must match instead.
            wrong = TlsConfig(tls_for_rebind_name["ca"], server_name="other.example")
            with pytest.raises(TransientModelError) as exc:
                client.infer_texts(endpoint(server.port, tls=wrong, retry=one_try), ["x"])
            assert exc.value.code == "UNAVAILABLE"
        finally:
            pool.close()


@pytest.mark.parametrize(
    "text",
    [
        "dns://8.8.8.8/model.example:8001",
        "dns:///model.example:8001",
        "unix:/var/run/docker.sock",
        "unix:///tmp/model.sock:80",
        "ipv4:10.0.0.1:8001",
        "model.example:8001,10.0.0.1:8001",
        "model.example",
        "::1:8001",
        "model.example:80/path",
        "model.example:0",
    ],
)
def test_endpoints_gRPC_would_read_as_a_uri_or_a_list_are_refused(text) -> None:
    with pytest.raises(EndpointRefused):
        split_endpoint(text)
    with pytest.raises(PermanentModelError):
        ModelClient(channel_pool=ChannelPool()).infer_texts(ModelEndpoint(text, "m", deadline_s=1), ["x"])


def test_targets_are_ip_literals_of_one_family() -> None:
    assert split_endpoint("[::1]:8001") == ("::1", 8001)
    assert grpc_target(["127.0.0.1", "10.0.0.1"], 80) == "ipv4:127.0.0.1:80,10.0.0.1:80"
    assert grpc_target(["::1", "127.0.0.1"], 80) == "ipv6:[::1]:80"
