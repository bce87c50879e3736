"""SSRF guard: user-entered hosts must not reach private, loopback, link-local or metadata addresses."""

from __future__ import annotations

import ipaddress
import socket

from django.conf import settings
from django.utils.translation import gettext as _

from .base import ConnectorError

# Cloud metadata endpoints that are not all covered by "not global" (100.100.100.200 is Alibaba Cloud).
METADATA_ADDRESSES = {"169.254.169.254", "100.100.100.200", "fd00:ec2::254", "169.254.170.2"}


def _allowed_entries() -> tuple[set[str], list]:
    names, nets = set(), []
    for entry in getattr(settings, "ALLOWED_PRIVATE_HOSTS", []) or []:
        entry = str(entry).strip().lower()
        try:
            nets.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            names.add(entry)
    return names, nets


def resolve_public_host(host: str, port: int) -> str:
    """Resolve `host` now and return the address to connect to; refuse non-public ones unless allowed.

    The caller connects to the returned address (libpq `hostaddr`), so a DNS answer that changes
    between this check and the connect (rebinding) cannot redirect the connection.
    """
    host = (host or "").strip()
    if not host:
        raise ConnectorError(_("A host is required."), field="host")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConnectorError(
            _("Cannot resolve host %(host)r: %(error)s") % {"host": host, "error": exc}, field="host"
        ) from None
    names, nets = _allowed_entries()
    name_allowed = host.lower() in names
    chosen = None
    for info in infos:
        address = info[4][0].split("%", 1)[0]
        ip = ipaddress.ip_address(address)
        if ip.version == 6 and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        allowed = name_allowed or str(ip) in names or any(ip in net for net in nets)
        if not allowed and (not ip.is_global or str(ip) in METADATA_ADDRESSES):
            raise ConnectorError(
                _(
                    "Host %(host)r resolves to %(ip)s, a private, loopback, link-local or metadata address; "
                    "add it to ALLOWED_PRIVATE_HOSTS to allow it."
                )
                % {"host": host, "ip": ip},
                field="host",
            )
        chosen = chosen or str(ip)
    if chosen is None:
        raise ConnectorError(_("Host %(host)r has no address.") % {"host": host}, field="host")
    return chosen
