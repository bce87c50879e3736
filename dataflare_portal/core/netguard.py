"""SSRF guard for user-entered endpoints: refuse private, loopback, link-local and metadata addresses.

One mechanism for every outbound connection to an address a user typed (model servers over gRPC,
webhooks, database connectors, probes): `approve(host, port)` resolves the name once, refuses it if
any address is private/loopback/link-local/metadata, and returns the approved addresses. The caller
then dials one of those addresses (an IP literal: gRPC `ipv4:`/`ipv6:` targets, libpq `hostaddr`,
`connect_tcp()`), keeping the host name for TLS checks and Host/authority headers — so no second
resolver (gRPC's c-ares, libpq, the OS) ever sees the name, and a DNS answer that changes after the
check (rebinding) cannot redirect the connection. Hosts listed in settings.ALLOWED_PRIVATE_HOSTS
(names or IP addresses/networks) are allowed.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass

from django.conf import settings
from django.utils.translation import gettext as _

__all__ = [
    "Approved",
    "EndpointRefused",
    "EndpointUnresolvable",
    "approve",
    "approve_host_port",
    "approve_url",
    "check_endpoint",
    "check_url",
    "connect_tcp",
    "split_host_port",
]

# Cloud metadata services answer on these even though some are not "private" by the RFCs.
METADATA_ADDRESSES = {
    ipaddress.ip_address("169.254.169.254"),
    ipaddress.ip_address("169.254.170.2"),
    ipaddress.ip_address("100.100.100.200"),
    ipaddress.ip_address("fd00:ec2::254"),
}
METADATA_NAMES = {"metadata.google.internal", "metadata", "instance-data", "instance-data.ec2.internal"}
# A DNS name as users may enter it (letters in any script, digits, -, _ and dots): nothing a dialer
# could read as a scheme, a path, a list or a port.
_HOST_NAME = re.compile(r"^\w[\w.-]{0,252}$")


class EndpointRefused(ValueError):
    """The endpoint points at an address users may not reach (SSRF guard)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class EndpointUnresolvable(EndpointRefused):
    """The name does not resolve now (DNS trouble may pass; a refused address does not)."""


@dataclass(frozen=True)
class Approved:
    """What the guard approved: dial one of `addresses`, show `host` to TLS and to the server.

    Args:
        host: the name (or IP literal) as entered, without brackets; TLS certificates are checked
            against it and it goes in Host/:authority headers.
        port: the port to dial (None when the caller gave none).
        addresses: the resolved IP addresses, every one of them checked, IPv4 first (then in the
            resolver's order); never empty.
    """

    host: str
    port: int | None
    addresses: tuple[str, ...]

    @property
    def address(self) -> str:
        """The preferred address to dial."""
        return self.addresses[0]

    @property
    def authority(self) -> str:
        """host:port as a server expects it in :authority/Host (brackets around an IPv6 literal)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


def _allowed_entries():
    names, networks = set(), []
    for entry in getattr(settings, "ALLOWED_PRIVATE_HOSTS", []):
        entry = str(entry).strip().lower().strip("[]")
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            names.add(entry.rstrip("."))
    return names, networks


def _refused_reason(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA_ADDRESSES:
        return _("a cloud metadata address")
    if ip.is_loopback:
        return _("a loopback address")
    if ip.is_link_local:
        return _("a link-local address")
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        return _("a reserved address")
    if ip.is_private or (isinstance(ip, ipaddress.IPv4Address) and ip in ipaddress.ip_network("100.64.0.0/10")):
        return _("a private address")
    if not ip.is_global:
        # Benchmarking, documentation and protocol-assignment ranges: nothing a user should reach.
        return _("a non-public address")
    return None


def _unmapped(address: str) -> str:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def approve(host: str, port: int | None = None, *, field: str | None = None) -> Approved:
    """Resolve host once and refuse it if any address is private/loopback/link-local/metadata.

    Args:
        host: a DNS name or an IP literal (brackets allowed for IPv6).
        port: the port to connect to (checked, used for resolution and kept on the result).
        field: the input field name to attach to the error, for 4xx responses naming the field.

    Returns:
        The approved addresses (IPv4-mapped IPv6 unwrapped, IPv4 first): dial one of these, never
        the name, so a second, different resolution cannot happen.

    Raises:
        EndpointRefused: a refused address, a metadata name or bad input;
        EndpointUnresolvable (a subclass) when the name does not resolve.
    """
    entered = (host or "").strip().strip("[]")
    name = entered.lower().rstrip(".")
    if not name:
        raise EndpointRefused(_("The host is empty."), field)
    if port is not None and not (0 < int(port) < 65536):
        raise EndpointRefused(_("The port must be between 1 and 65535."), field)
    if not _is_ip(name) and not _HOST_NAME.match(name):
        raise EndpointRefused(_("%(host)s is not a host name or an IP address.") % {"host": host}, field)
    allowed_names, allowed_networks = _allowed_entries()
    if name in METADATA_NAMES and name not in allowed_names:
        raise EndpointRefused(_("%(host)s is a cloud metadata service and cannot be used.") % {"host": host}, field)
    try:
        # The only name resolution of a user-entered endpoint in the portal (see the module docstring).
        infos = socket.getaddrinfo(name, port or 0, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise EndpointUnresolvable(_("%(host)s cannot be resolved.") % {"host": host}, field) from exc
    addresses = list(dict.fromkeys(_unmapped(info[4][0].split("%")[0]) for info in infos))
    if not addresses:
        raise EndpointUnresolvable(_("%(host)s has no address.") % {"host": host}, field)
    if name not in allowed_names:
        for address in addresses:
            ip = ipaddress.ip_address(address)
            if address in allowed_names or any(ip in net for net in allowed_networks):
                continue
            reason = _refused_reason(ip)
            if reason:
                raise EndpointRefused(
                    _("%(host)s resolves to %(address)s, %(reason)s; add it to ALLOWED_PRIVATE_HOSTS to allow it.")
                    % {"host": host, "address": address, "reason": reason},
                    field,
                )
    # IPv4 first: the reference and demo servers listen on 127.0.0.1, and "localhost" often lists ::1 first.
    addresses.sort(key=lambda a: ":" in a)
    return Approved(host=entered.rstrip("."), port=None if port is None else int(port), addresses=tuple(addresses))


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def check_endpoint(host: str, port: int | None = None, *, field: str | None = None) -> list[str]:
    """approve() for callers that only need the addresses (connect to one of them)."""
    return list(approve(host, port, field=field).addresses)


def split_host_port(text: str, *, field: str | None = None) -> tuple[str, int]:
    """(host, port) of a "host:port" / "[ipv6]:port" string; refuses schemes, paths, lists and bare IPv6."""
    value = (text or "").strip()
    bracketed = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})", value)
    plain = re.fullmatch(r"([^:\[\]/,\s]+):(\d{1,5})", value)
    match = bracketed or plain
    if match is None:
        raise EndpointRefused(_("Enter the endpoint as host:port, e.g. 127.0.0.1:8001."), field)
    host, port = match.group(1), int(match.group(2))
    if not (0 < port < 65536):
        raise EndpointRefused(_("The port must be between 1 and 65535."), field)
    if bracketed and not _is_ip(host):
        raise EndpointRefused(_("%(host)s is not an IPv6 address.") % {"host": host}, field)
    return host, port


def approve_host_port(text: str, *, field: str | None = None) -> Approved:
    """approve() for a "host:port" endpoint string (model servers)."""
    host, port = split_host_port(text, field=field)
    return approve(host, port, field=field)


def approve_url(url: str, *, field: str | None = None) -> Approved:
    """approve() for an http(s) URL: the host and port it names (80/443 by default)."""
    from urllib.parse import urlsplit

    text = url.strip()
    parts = urlsplit(text if "://" in text else f"//{text}")
    if parts.hostname is None:
        raise EndpointRefused(_("%(url)s has no host.") % {"url": url}, field)
    try:
        port = parts.port
    except ValueError as exc:
        raise EndpointRefused(_("%(url)s has an invalid port.") % {"url": url}, field) from exc
    if port is None:
        port = {"https": 443, "http": 80}.get(parts.scheme)
    return approve(parts.hostname, port, field=field)


def check_url(url: str, *, field: str | None = None) -> list[str]:
    """approve_url() for callers that only need the addresses."""
    return list(approve_url(url, field=field).addresses)


def connect_tcp(approved: Approved, timeout: float | None) -> socket.socket:
    """A TCP connection to the first approved address that answers (never to the name)."""
    if approved.port is None:
        raise ValueError("connect_tcp needs a port")
    last: OSError | None = None
    for address in approved.addresses:
        try:
            return socket.create_connection((address, approved.port), timeout)
        except OSError as exc:
            last = exc
    raise last if last is not None else OSError("no address")
