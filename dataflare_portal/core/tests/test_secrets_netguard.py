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
