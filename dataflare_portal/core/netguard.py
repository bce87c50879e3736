"""SSRF guard for user-entered endpoints: refuse private, loopback, link-local and metadata addresses.

Call `check_endpoint(host, port)` right before connecting (not only when the endpoint is saved):
the name is resolved then, so a DNS answer that changed since validation is still caught. Hosts
listed in settings.ALLOWED_PRIVATE_HOSTS (names or IP addresses/networks) are allowed.
"""

from __future__ import annotations

import ipaddress
import socket

from django.conf import settings
from django.utils.translation import gettext as _

__all__ = ["EndpointRefused", "check_endpoint", "check_url"]

# Cloud metadata services answer on these even though some are not "private" by the RFCs.
METADATA_ADDRESSES = {
    ipaddress.ip_address("169.254.169.254"),
    ipaddress.ip_address("169.254.170.2"),
    ipaddress.ip_address("100.100.100.200"),
    ipaddress.ip_address("fd00:ec2::254"),
}
METADATA_NAMES = {"metadata.google.internal", "metadata", "instance-data", "instance-data.ec2.internal"}


class EndpointRefused(ValueError):
    """The endpoint points at an address users may not reach (SSRF guard)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


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


def check_endpoint(host: str, port: int | None = None, *, field: str | None = None) -> list[str]:
    """Resolve host and refuse it if any address is private/loopback/link-local/metadata; returns the addresses.

    Args:
        host: a DNS name or an IP literal (brackets allowed for IPv6).
        port: the port to connect to (only used for resolution and the message).
        field: the input field name to attach to the error, for 4xx responses naming the field.

    Returns:
        The resolved IP addresses in the resolver's order of preference, IPv4-mapped IPv6 addresses
        unwrapped (connect to one of these to avoid a second, different resolution).
    """
    name = (host or "").strip().lower().strip("[]").rstrip(".")
    if not name:
        raise EndpointRefused(_("The host is empty."), field)
    if port is not None and not (0 < int(port) < 65536):
        raise EndpointRefused(_("The port must be between 1 and 65535."), field)
    allowed_names, allowed_networks = _allowed_entries()
    if name in METADATA_NAMES and name not in allowed_names:
        raise EndpointRefused(_("%(host)s is a cloud metadata service and cannot be used.") % {"host": host}, field)
    try:
        infos = socket.getaddrinfo(name, port or 0, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise EndpointRefused(_("%(host)s cannot be resolved.") % {"host": host}, field) from exc
    addresses = list(dict.fromkeys(_unmapped(info[4][0].split("%")[0]) for info in infos))
    if not addresses:
        raise EndpointRefused(_("%(host)s has no address.") % {"host": host}, field)
    if name in allowed_names:
        return addresses
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
    return addresses


def check_url(url: str, *, field: str | None = None) -> list[str]:
    """check_endpoint() for an http(s)/grpc URL or a host:port string."""
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
    return check_endpoint(parts.hostname, port, field=field)
