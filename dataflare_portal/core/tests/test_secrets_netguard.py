"""SSRF guard: private, loopback, link-local and metadata addresses are refused unless allowed."""

import pytest

from dataflare_portal.core.netguard import EndpointRefused, check_endpoint, check_url


@pytest.fixture(autouse=True)
def _nothing_allowed(settings):
    settings.ALLOWED_PRIVATE_HOSTS = []


@pytest.mark.parametrize(
    "host,reason",
    [
        ("127.0.0.1", "loopback"),
        ("localhost", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.10", "private"),
        ("172.16.5.4", "private"),
        ("100.64.0.1", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "metadata"),
        ("169.254.10.10", "link-local"),
        ("::ffff:127.0.0.1", "loopback"),
        ("0.0.0.0", "reserved"),  # noqa: S104
        ("metadata.google.internal", "metadata"),
    ],
)
def test_it_refuses_internal_addresses(host, reason):
    with pytest.raises(EndpointRefused) as info:
        check_endpoint(host, 5432, field="host")
    assert reason in str(info.value) and info.value.field == "host"


def test_it_accepts_public_addresses():
    assert check_endpoint("93.184.216.34", 443) == ["93.184.216.34"]
    assert check_endpoint("[2606:2800:220:1:248:1893:25c8:1946]", 443) == ["2606:2800:220:1:248:1893:25c8:1946"]


def test_it_allows_listed_hosts_and_networks(settings):
    settings.ALLOWED_PRIVATE_HOSTS = ["localhost", "10.0.0.0/8"]
    assert check_endpoint("localhost", 8001)
    assert check_endpoint("10.9.8.7", 5432) == ["10.9.8.7"]
    with pytest.raises(EndpointRefused):
        check_endpoint("192.168.1.1", 5432)
    with pytest.raises(EndpointRefused):
        check_endpoint("169.254.169.254", 80)


def test_it_refuses_bad_input():
    for host, port in (("", 80), ("example.com", 0), ("example.com", 70000), ("no-such-host.invalid", 80)):
        with pytest.raises(EndpointRefused):
            check_endpoint(host, port)


def test_check_url_reads_host_and_port():
    with pytest.raises(EndpointRefused) as info:
        check_url("http://127.0.0.1:9000/hook", field="target")
    assert "127.0.0.1" in str(info.value) and info.value.field == "target"
    assert check_url("https://93.184.216.34/x") == ["93.184.216.34"]
    with pytest.raises(EndpointRefused):
        check_url("http://93.184.216.34:notaport/")


@pytest.mark.parametrize("host", ["198.18.0.1", "192.0.2.10", "2001:db8::1"])
def test_it_refuses_other_non_public_ranges(host):
    # Benchmarking (RFC 2544), documentation (RFC 5737 / 3849) and IETF protocol ranges.
    with pytest.raises(EndpointRefused) as info:
        check_endpoint(host, 443)
    assert "ALLOWED_PRIVATE_HOSTS" in str(info.value)


def test_connectors_use_the_same_guard_and_connect_to_the_checked_address(settings):
    from catalog.connectors.base import ConnectorError
    from catalog.connectors.netguard import resolve_public_host

    with pytest.raises(ConnectorError) as info:
        resolve_public_host("::ffff:10.0.0.1", 5432)
    assert info.value.field == "host" and "10.0.0.1" in info.value.message and "private" in info.value.message
    settings.ALLOWED_PRIVATE_HOSTS = ["10.0.0.0/8"]
    assert resolve_public_host("::ffff:10.0.0.1", 5432) == "10.0.0.1"


# ---- Each decision of approve(), with the resolver answering what the test says -------------------------
def _resolver(monkeypatch, answers):
    """getaddrinfo answering `answers[name]` (a list of addresses) and IP literals with themselves, as the
    real one does; any other name does not resolve."""
    import ipaddress
    import socket

    calls = []

    def getaddrinfo(name, port, *args, **kwargs):
        calls.append((name, port))
        try:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (str(ipaddress.ip_address(name)), port))]
        except ValueError:
            pass
        if name not in answers:
            raise socket.gaierror("no such name")
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in answers[name]
        ]

    monkeypatch.setattr("dataflare_portal.core.netguard.socket.getaddrinfo", getaddrinfo)
    return calls


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("169.254.169.254", "a cloud metadata address"),  # link-local too: the metadata reason wins
        ("169.254.170.2", "a cloud metadata address"),
        ("100.100.100.200", "a cloud metadata address"),
        ("fd00:ec2::254", "a cloud metadata address"),
        ("::ffff:169.254.169.254", "a cloud metadata address"),
        ("127.0.0.2", "a loopback address"),
        ("::ffff:127.0.0.1", "a loopback address"),
        ("fe80::1", "a link-local address"),
        ("169.254.1.1", "a link-local address"),
        ("0.0.0.0", "a reserved address"),  # noqa: S104
        ("::", "a reserved address"),
        ("224.0.0.1", "a reserved address"),  # multicast
        ("ff02::1", "a reserved address"),
        ("240.0.0.1", "a reserved address"),  # class E
        ("10.0.0.1", "a private address"),
        ("100.64.0.1", "a private address"),  # carrier-grade NAT
        ("100.127.255.254", "a private address"),
        ("::ffff:10.0.0.1", "a private address"),
        ("fc00::1", "a private address"),
    ],
)
def test_it_names_the_exact_reason_for_each_refused_address(address, reason):
    with pytest.raises(EndpointRefused) as info:
        check_endpoint(address, 443, field="endpoint")
    shown = address.removeprefix("::ffff:")
    assert str(info.value) == (f"{address} resolves to {shown}, {reason}; add it to ALLOWED_PRIVATE_HOSTS to allow it.")
    assert info.value.field == "endpoint"


@pytest.mark.parametrize("address", ["100.63.255.255", "100.128.0.1", "93.184.216.34", "1.1.1.1"])
def test_public_addresses_next_to_the_refused_ranges_pass(address):
    assert check_endpoint(address, 443) == [address]


def test_the_approval_keeps_the_entered_name_the_port_and_every_address_ipv4_first(monkeypatch):
    from dataflare_portal.core.netguard import approve

    calls = _resolver(
        monkeypatch,
        {"api.example.com": ["2606:4700::1", "93.184.216.34", "2606:4700::1", "::ffff:93.184.216.35"]},
    )
    approved = approve("  API.Example.com.  ", "8443")
    # resolved once, lower-cased, without the trailing dot, with the port
    assert calls == [("api.example.com", "8443")]
    assert approved.host == "API.Example.com"
    assert approved.port == 8443 and isinstance(approved.port, int)
    assert approved.addresses == ("93.184.216.34", "93.184.216.35", "2606:4700::1")
    assert approved.address == "93.184.216.34"
    assert approved.authority == "API.Example.com:8443"
    assert approve("api.example.com").port is None
    assert calls[-1] == ("api.example.com", 0)
    assert approve("api.example.com").authority == "api.example.com"


def test_an_ipv6_literal_keeps_its_brackets_only_in_the_authority(monkeypatch):
    from dataflare_portal.core.netguard import approve

    approved = approve("[2606:2800:220:1:248:1893:25c8:1946]", 443)
    assert approved.host == "2606:2800:220:1:248:1893:25c8:1946"
    assert approved.authority == "[2606:2800:220:1:248:1893:25c8:1946]:443"
    assert approve("[2606:2800:220:1:248:1893:25c8:1946]").authority == "[2606:2800:220:1:248:1893:25c8:1946]"


def test_one_refused_address_among_public_ones_refuses_the_name(monkeypatch):
    _resolver(monkeypatch, {"mixed.example.com": ["93.184.216.34", "10.1.1.1"], "scoped.example.com": ["fe80::1%eth0"]})
    with pytest.raises(EndpointRefused) as info:
        check_endpoint("mixed.example.com", 80)
    assert "10.1.1.1, a private address" in str(info.value)
    with pytest.raises(EndpointRefused) as info:
        check_endpoint("scoped.example.com", 80)  # the zone index is dropped before the check
    assert "resolves to fe80::1, a link-local address" in str(info.value)


def test_a_name_that_does_not_resolve_or_has_no_address_is_unresolvable(monkeypatch):
    import socket

    from dataflare_portal.core.netguard import EndpointUnresolvable

    _resolver(monkeypatch, {"empty.example.com": []})
    with pytest.raises(EndpointUnresolvable) as info:
        check_endpoint("gone.example.com", 80, field="host")
    assert str(info.value) == "gone.example.com cannot be resolved." and info.value.field == "host"
    with pytest.raises(EndpointUnresolvable) as info:
        check_endpoint("empty.example.com", 80, field="host")
    assert str(info.value) == "empty.example.com has no address." and info.value.field == "host"

    def idna_error(*args, **kwargs):
        raise UnicodeError("label too long")

    monkeypatch.setattr(socket, "getaddrinfo", idna_error)
    with pytest.raises(EndpointUnresolvable):
        check_endpoint("x" * 70 + ".example.com", 80)


@pytest.mark.parametrize(
    ("host", "port", "message"),
    [
        ("", 80, "The host is empty."),
        ("  [] ", 80, "The host is empty."),
        (".", 80, "The host is empty."),
        ("example.com", 0, "The port must be between 1 and 65535."),
        ("example.com", 65536, "The port must be between 1 and 65535."),
        ("example.com", -1, "The port must be between 1 and 65535."),
        ("http://example.com", 80, "http://example.com is not a host name or an IP address."),
        ("example.com/path", 80, "example.com/path is not a host name or an IP address."),
        ("a.com,b.com", 80, "a.com,b.com is not a host name or an IP address."),
        ("-leading.example.com", 80, "-leading.example.com is not a host name or an IP address."),
        ("a" * 254, 80, f"{'a' * 254} is not a host name or an IP address."),
        ("metadata.google.internal", 80, "metadata.google.internal is a cloud metadata service and cannot be used."),
        ("Metadata.", 80, "Metadata. is a cloud metadata service and cannot be used."),
        ("instance-data", 80, "instance-data is a cloud metadata service and cannot be used."),
    ],
)
def test_it_refuses_bad_input_with_a_message_naming_the_field(monkeypatch, host, port, message):
    calls = _resolver(monkeypatch, {})
    with pytest.raises(EndpointRefused) as info:
        check_endpoint(host, port, field="host")
    assert str(info.value) == message and info.value.field == "host"
    assert calls == []  # refused before any name resolution


def test_the_edges_of_the_accepted_input_pass(monkeypatch):
    _resolver(
        monkeypatch, {"a" * 253: ["93.184.216.34"], "münchen.example": ["93.184.216.34"], "x_y.example": ["1.1.1.1"]}
    )
    assert check_endpoint("a" * 253, 1) == ["93.184.216.34"]
    assert check_endpoint("münchen.example", 65535) == ["93.184.216.34"]
    assert check_endpoint("x_y.example", None) == ["1.1.1.1"]


def test_the_allow_list_is_read_leniently_and_matches_exactly(settings, monkeypatch):
    _resolver(
        monkeypatch,
        {
            "db.internal": ["10.5.5.5"],
            "metadata": ["169.254.169.254"],
            "other.internal": ["10.5.5.6"],
            "lab.example.com": ["192.168.7.7", "172.20.0.1"],
        },
    )
    settings.ALLOWED_PRIVATE_HOSTS = [
        " DB.Internal. ",
        "",
        "  ",
        "[::1]",
        "192.168.7.0/24",
        "172.20.0.1/16",
        "metadata",
    ]
    # a listed name is trusted whatever it resolves to
    assert check_endpoint("db.internal", 5432) == ["10.5.5.5"]
    assert check_endpoint("metadata", 80) == ["169.254.169.254"]
    # a listed address (with brackets) or network (host bits allowed) lets those addresses through
    assert check_endpoint("::1", 80) == ["::1"]
    assert check_endpoint("lab.example.com", 80) == ["192.168.7.7", "172.20.0.1"]
    # a name not listed still goes through the address check
    with pytest.raises(EndpointRefused):
        check_endpoint("other.internal", 5432)
    with pytest.raises(EndpointRefused):
        check_endpoint("192.168.8.1", 80)


def test_a_listed_name_does_not_allow_other_names_with_the_same_address(settings, monkeypatch):
    _resolver(monkeypatch, {"db.internal": ["10.5.5.5"], "evil.example.com": ["10.5.5.5"]})
    settings.ALLOWED_PRIVATE_HOSTS = ["db.internal"]
    assert check_endpoint("db.internal", 5432) == ["10.5.5.5"]
    with pytest.raises(EndpointRefused):
        check_endpoint("evil.example.com", 5432)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8001", ("127.0.0.1", 8001)),
        ("  model-server.example.com:1  ", ("model-server.example.com", 1)),
        ("[::1]:65535", ("::1", 65535)),
        ("[::ffff:1.2.3.4]:50051", ("::ffff:1.2.3.4", 50051)),
        ("[2001:DB8::AB]:443", ("2001:DB8::AB", 443)),
    ],
)
def test_split_host_port_reads_host_and_port(text, expected):
    from dataflare_portal.core.netguard import split_host_port

    assert split_host_port(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "Enter the endpoint as host:port, e.g. 127.0.0.1:8001."),
        ("example.com", "Enter the endpoint as host:port, e.g. 127.0.0.1:8001."),
        ("::1:80", "Enter the endpoint as host:port, e.g. 127.0.0.1:8001."),
        ("http://example.com:80", "Enter the endpoint as host:port, e.g. 127.0.0.1:8001."),
        ("a.com:80,b.com:80", "Enter the endpoint as host:port, e.g. 127.0.0.1:8001."),
        ("example.com:123456", "Enter the endpoint as host:port, e.g. 127.0.0.1:8001."),
        ("example.com:0", "The port must be between 1 and 65535."),
        ("example.com:65536", "The port must be between 1 and 65535."),
        ("[1.2.3]:80", "1.2.3 is not an IPv6 address."),
    ],
)
def test_split_host_port_refuses_anything_else_naming_the_field(text, message):
    from dataflare_portal.core.netguard import split_host_port

    with pytest.raises(EndpointRefused) as info:
        split_host_port(text, field="endpoint")
    assert str(info.value) == message and info.value.field == "endpoint"


def test_approve_host_port_checks_what_it_split(monkeypatch):
    from dataflare_portal.core.netguard import approve_host_port

    calls = _resolver(monkeypatch, {"models.example.com": ["93.184.216.34"]})
    approved = approve_host_port("models.example.com:50051", field="endpoint")
    assert (approved.host, approved.port, approved.addresses) == ("models.example.com", 50051, ("93.184.216.34",))
    assert calls == [("models.example.com", 50051)]
    with pytest.raises(EndpointRefused) as info:
        approve_host_port("127.0.0.1:50051", field="endpoint")
    assert info.value.field == "endpoint" and "loopback" in str(info.value)
    with pytest.raises(EndpointRefused) as info:
        approve_host_port("models.example.com", field="endpoint")  # no port: refused by the split
    assert info.value.field == "endpoint"


@pytest.mark.parametrize(
    ("url", "port"),
    [
        ("https://hooks.example.com/x", 443),
        ("http://hooks.example.com/x", 80),
        ("hooks.example.com", None),
        ("  https://hooks.example.com:8443/x?y=1  ", 8443),
        ("ftp://hooks.example.com/", None),
    ],
)
def test_approve_url_dials_the_port_the_url_names(monkeypatch, url, port):
    from dataflare_portal.core.netguard import approve_url

    calls = _resolver(monkeypatch, {"hooks.example.com": ["93.184.216.34"]})
    approved = approve_url(url)
    assert (approved.host, approved.port) == ("hooks.example.com", port)
    assert calls == [("hooks.example.com", port or 0)]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https:///nohost", "https:///nohost has no host."),
        ("http://93.184.216.34:notaport/", "http://93.184.216.34:notaport/ has an invalid port."),
        ("http://93.184.216.34:70000/", "http://93.184.216.34:70000/ has an invalid port."),
    ],
)
def test_approve_url_refuses_a_url_without_host_or_with_a_bad_port(url, message):
    from dataflare_portal.core.netguard import approve_url

    with pytest.raises(EndpointRefused) as info:
        approve_url(url, field="target")
    assert str(info.value) == message and info.value.field == "target"


def test_connect_tcp_dials_the_approved_addresses_in_order_never_the_name():
    import socket

    from dataflare_portal.core.netguard import Approved, connect_tcp

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        # 127.0.0.2 refuses (nothing listens there), the next address answers; the name is never resolved
        approved = Approved(host="no-such-host.invalid", port=port, addresses=("127.0.0.2", "127.0.0.1"))
        with connect_tcp(approved, 5) as conn:
            assert conn.getpeername() == ("127.0.0.1", port)
            assert conn.gettimeout() == 5  # the caller's timeout applies to the connection
        # when no address answers, the last address's own error is raised
        with pytest.raises(ConnectionRefusedError):
            connect_tcp(Approved(host="x", port=port, addresses=("127.0.0.2",)), 5)
        with pytest.raises(OSError) as info:
            connect_tcp(Approved(host="x", port=port, addresses=()), 5)
        assert str(info.value) == "no address"
        with pytest.raises(ValueError) as info:
            connect_tcp(Approved(host="x", port=None, addresses=("127.0.0.1",)), 5)
        assert str(info.value) == "connect_tcp needs a port"
    finally:
        listener.close()


def test_an_allowed_address_does_not_let_the_other_addresses_of_the_name_through(settings, monkeypatch):
    # Every address is checked: one listed address must not end the check for the rest.
    _resolver(monkeypatch, {"split.example.com": ["10.1.1.1", "127.0.0.1"], "ok.example.com": ["10.1.1.1", "1.1.1.1"]})
    settings.ALLOWED_PRIVATE_HOSTS = ["10.0.0.0/8"]
    with pytest.raises(EndpointRefused) as info:
        check_endpoint("split.example.com", 80)
    assert "resolves to 127.0.0.1, a loopback address" in str(info.value)
    assert check_endpoint("ok.example.com", 80) == ["10.1.1.1", "1.1.1.1"]


def test_without_the_allow_list_setting_nothing_private_is_allowed(settings, monkeypatch):
    _resolver(monkeypatch, {})
    del settings.ALLOWED_PRIVATE_HOSTS
    assert check_endpoint("93.184.216.34", 80) == ["93.184.216.34"]
    with pytest.raises(EndpointRefused):
        check_endpoint("10.0.0.1", 80)


def test_the_entered_name_is_kept_as_typed_apart_from_brackets_and_a_trailing_dot(monkeypatch):
    from dataflare_portal.core.netguard import approve

    _resolver(monkeypatch, {"xbox.example.x": ["93.184.216.34"]})
    assert approve("XBOX.Example.X.").host == "XBOX.Example.X"
    assert approve(" [XBOX.Example.X] ").host == "XBOX.Example.X"
