"""System checks for cross-setting rules (stable ids dataflare.E0xx / W0xx)."""

import ipaddress

from django.conf import settings
from django.core.checks import Error, Tags, register


def _is_loopback(address: str) -> bool:
    host = address.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@register(Tags.security, deploy=False)
def check_auth_mode(app_configs=None, **kwargs):
    """AUTH_MODE=none gives every visitor operator rights: only on loopback, in DEBUG."""
    if settings.AUTH_MODE != "none" or settings.AUTH_MODE_NONE_ALLOW_REMOTE:
        return []
    problems = []
    if not _is_loopback(settings.BIND_ADDRESS):
        problems.append(
            Error(
                f"AUTH_MODE=none while the server binds to {settings.BIND_ADDRESS}, beyond loopback.",
                hint="Set AUTH_MODE=local, bind to 127.0.0.1, or set AUTH_MODE_NONE_ALLOW_REMOTE=true "
                "if a trusted proxy authenticates every request.",
                id="dataflare.E001",
            )
        )
    if not settings.DEBUG:
        problems.append(
            Error(
                "AUTH_MODE=none with DEBUG off: a production deployment would have no authentication.",
                hint="Set AUTH_MODE=local, or AUTH_MODE_NONE_ALLOW_REMOTE=true to accept the risk.",
                id="dataflare.E002",
            )
        )
    return problems


@register(Tags.security, deploy=False)
def check_secrets_encryption_keys(app_configs=None, **kwargs):
    """Every SECRETS_ENCRYPTION_KEYS entry must be a Fernet key, or nothing can be encrypted or read."""
    from cryptography.fernet import Fernet

    problems = []
    keys = list(settings.SECRETS_ENCRYPTION_KEYS or [])
    if not keys:
        problems.append(
            Error(
                "SECRETS_ENCRYPTION_KEYS is empty.",
                hint='Generate a key: python -c "from cryptography.fernet import Fernet; '
                'print(Fernet.generate_key().decode())"',
                id="dataflare.E003",
            )
        )
    for position, key in enumerate(keys, start=1):
        try:
            Fernet(key.encode() if isinstance(key, str) else key)
        except (ValueError, TypeError):
            # The key itself is a secret: name its position, never its value.
            problems.append(
                Error(
                    f"SECRETS_ENCRYPTION_KEYS entry {position} of {len(keys)} is not a valid Fernet key "
                    "(32 url-safe base64-encoded bytes).",
                    hint='Generate a key: python -c "from cryptography.fernet import Fernet; '
                    'print(Fernet.generate_key().decode())"',
                    id="dataflare.E003",
                )
            )
    return problems
