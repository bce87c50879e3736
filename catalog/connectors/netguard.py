"""The SSRF guard for connectors: dataflare_portal.core.netguard, answering in ConnectorError."""

from __future__ import annotations

from dataflare_portal.core.netguard import EndpointRefused, approve

from .base import ConnectorError


def resolve_public_host(host: str, port: int) -> str:
    """Resolve `host` now and return the address to connect to; refuse non-public ones unless allowed.

    The caller connects to the returned address (libpq `hostaddr`), so a DNS answer that changes
    between this check and the connect (rebinding) cannot redirect the connection.
    """
    try:
        return approve(host, port, field="host").address
    except EndpointRefused as exc:
        raise ConnectorError(str(exc), field=exc.field or "host") from None
