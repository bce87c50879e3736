"""Secrets at rest: credentials are Fernet-encrypted with keys kept apart from SECRET_KEY.

`settings.SECRETS_ENCRYPTION_KEYS` is a list: the first key encrypts, every key decrypts, so a
rotation puts a new key in front and then runs `manage.py rotate_secrets` to re-encrypt every
`*_ciphertext` column under it. Plain values handed to `encrypt_secret` are also remembered
(in-process) so the log redaction filter can mask them if they ever reach a log line.
"""

from __future__ import annotations

import json
import threading
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

__all__ = [
    "SecretDecryptError",
    "ciphertext_fields",
    "decrypt_secret",
    "encrypt_secret",
    "known_secret_values",
    "secrets_rotate",
]

CIPHERTEXT_SUFFIX = "_ciphertext"


class SecretDecryptError(ValueError):
    """A stored secret cannot be decrypted with any configured key."""


@lru_cache(maxsize=8)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise ImproperlyConfigured("SECRETS_ENCRYPTION_KEYS is empty.")
    try:
        return MultiFernet([Fernet(k.encode() if isinstance(k, str) else k) for k in keys])
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(f"SECRETS_ENCRYPTION_KEYS holds an invalid Fernet key: {exc}") from exc


def _current() -> MultiFernet:
    return _fernet(tuple(settings.SECRETS_ENCRYPTION_KEYS))


# Plain secrets seen by this process, for the log redaction filter (bounded, never persisted).
_known_lock = threading.Lock()
_known: dict[str, None] = {}
_KNOWN_MAX = 1000


def _remember(value: str) -> None:
    values = [value]
    # Credentials are often a JSON object ({"password": ..., "token": ...}): remember each value too.
    if value.startswith("{"):
        try:
            data = json.loads(value)
        except ValueError:
            data = None
        if isinstance(data, dict):
            values.extend(str(v) for v in data.values() if isinstance(v, (str, int)) and not isinstance(v, bool))
    with _known_lock:
        for item in values:
            if len(item) < 4:  # too short to redact without mangling ordinary words
                continue
            _known.pop(item, None)
            _known[item] = None
        while len(_known) > _KNOWN_MAX:
            _known.pop(next(iter(_known)))


def known_secret_values() -> list[str]:
    """Plain secrets this process has encrypted or decrypted (for log redaction)."""
    with _known_lock:
        return list(_known)


def encrypt_secret(plain: str) -> str:
    """Encrypt a secret under the first key; the empty string stays empty (no secret)."""
    if not plain:
        return ""
    _remember(plain)
    return _current().encrypt(plain.encode("utf-8")).decode("ascii")


def decrypt_secret(ciphertext: str) -> str:
    """Decrypt a stored secret with any configured key; the empty string stays empty."""
    if not ciphertext:
        return ""
    try:
        plain = _current().decrypt(ciphertext.encode("ascii")).decode("utf-8")
    except (InvalidToken, UnicodeError, ValueError) as exc:
        raise SecretDecryptError("A stored secret cannot be decrypted with the configured keys.") from exc
    _remember(plain)
    return plain


def ciphertext_fields() -> list[tuple[type, str]]:
    """Every (model, field name) whose column holds an encrypted secret (`*_ciphertext`)."""
    from django.apps import apps

    found = []
    for model in apps.get_models():
        for field in model._meta.concrete_fields:
            if field.name.endswith(CIPHERTEXT_SUFFIX):
                found.append((model, field.name))
    return found


def secrets_rotate(*, actor, batch_size: int = 500) -> dict[str, int]:
    """Re-encrypt every stored secret under the first key, with one audit entry per model; returns counts."""
    from django.db import transaction

    from .models import AuditAction
    from .services import audit_record

    fernet = _current()
    counts: dict[str, int] = {}
    for model, name in ciphertext_fields():
        label = f"{model._meta.label_lower}.{name}"
        done = 0
        qs = model._default_manager.exclude(**{name: ""}).order_by("pk").values_list("pk", name)
        with transaction.atomic():
            for pk, token in qs.iterator(chunk_size=batch_size):
                try:
                    rotated = fernet.rotate(token.encode("ascii")).decode("ascii")
                except (InvalidToken, ValueError) as exc:
                    raise SecretDecryptError(
                        f"{label} of row {pk} cannot be decrypted with any configured key."
                    ) from exc
                model._default_manager.filter(pk=pk).update(**{name: rotated})
                done += 1
            audit_record(
                actor=actor,
                action=AuditAction.ROTATE,
                object_type=model._meta.label_lower,
                object_repr=label,
                after={"field": name, "rotated": done},
                message=f"Re-encrypted {done} secret(s) in {label} under the first key.",
            )
        counts[label] = done
    return counts
