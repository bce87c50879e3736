"""Parsing of the AUTH_MODE=oidc settings, importing no app code (the settings module uses it at start)."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

ROLES = ("viewer", "operator", "admin")
LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}


def parse_role_map(text: str) -> dict[str, str]:
    """ "admin=portal-admins,operator=ops|sre,viewer=readers" -> {claim value: role}.

    A role may name several values (separated by "|", or by repeating the role); a value may give only one
    role. Junk fails loudly with the entry named.
    """
    mapping: dict[str, str] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        role, sep, values = entry.partition("=")
        role = role.strip()
        if not sep or role not in ROLES:
            raise ImproperlyConfigured(
                f"OIDC_ROLE_MAP: {entry!r} must be <role>=<claim value>, the role one of {', '.join(ROLES)}."
            )
        for value in (v.strip() for v in values.split("|")):
            if not value:
                raise ImproperlyConfigured(f"OIDC_ROLE_MAP: {entry!r} names an empty claim value.")
            if mapping.get(value, role) != role:
                raise ImproperlyConfigured(f"OIDC_ROLE_MAP: {value!r} is mapped to both {mapping[value]} and {role}.")
            mapping[value] = role
    if not mapping:
        raise ImproperlyConfigured("OIDC_ROLE_MAP maps no claim value to a role: nobody could use the portal.")
    return mapping


def is_loopback_host(host: str) -> bool:
    host = (host or "").strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_issuer(url: str) -> str:
    """The issuer must be an https URL (http only on loopback, for development and the tests), no query."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ImproperlyConfigured(f"OIDC_ISSUER must be an https URL, not {url!r}.")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ImproperlyConfigured("OIDC_ISSUER must use https (plain http is allowed on loopback only).")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ImproperlyConfigured("OIDC_ISSUER must not carry a query, a fragment or credentials.")
    return url
