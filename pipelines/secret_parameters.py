"""Secret-looking keys inside ModelConfig.parameters are stored encrypted and shown redacted.

A key is secret when one of its words (split on `_`, `-`, `.`) is token, password, passwd, secret,
authorization or apikey, or it holds "api" followed by "key" (`api_key`, `X-Api-Key`), at any depth
of nested objects and lists. `max_tokens` is not a secret (its word is "tokens").

`parameters` keeps the key with the value "[redacted]"; `secret_parameters_ciphertext` holds the
real values (JSON {path: value}, Fernet-encrypted with the secrets keys, so `rotate_secrets`
re-encrypts it). Sending "[redacted]" back keeps the stored value, so a form or a PUT that
round-trips what it read does not wipe the secret.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from django.core.exceptions import ValidationError
from django.utils.translation import gettext as _

from dataflare_portal.core.secrets import decrypt_secret, encrypt_secret

__all__ = ["REDACTED", "is_secret_key", "parameters_merge", "parameters_protect"]

REDACTED = "[redacted]"
_SECRET_WORDS = {"token", "password", "passwd", "secret", "authorization", "apikey"}
_SPLIT = re.compile(r"[_\-.\s]+")


def is_secret_key(key: str) -> bool:
    words = [w for w in _SPLIT.split(str(key).lower()) if w]
    if any(w in _SECRET_WORDS for w in words):
        return True
    return any(a == "api" and b == "key" for a, b in zip(words, words[1:], strict=False))


def _walk(value: Any, path: tuple, found: dict, stored: dict) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            here = (*path, str(key))
            if is_secret_key(key) and item not in (None, "") and not isinstance(item, (dict, list)):
                pointer = "/".join(here)
                if item == REDACTED:
                    if pointer not in stored:
                        raise ValidationError(
                            {
                                "parameters": [
                                    _("%(path)s: no stored secret to keep; send the value.") % {"path": pointer}
                                ]
                            }
                        )
                    found[pointer] = stored[pointer]
                else:
                    found[pointer] = item
                out[key] = REDACTED
            else:
                out[key] = _walk(item, here, found, stored)
        return out
    if isinstance(value, list):
        return [_walk(item, (*path, str(i)), found, stored) for i, item in enumerate(value)]
    return value


def _stored(ciphertext: str) -> dict[str, Any]:
    return json.loads(decrypt_secret(ciphertext)) if ciphertext else {}


def parameters_protect(parameters: Any, ciphertext: str) -> tuple[Any, str]:
    """(parameters with secrets redacted, ciphertext of the secrets); "[redacted]" keeps a stored value."""
    found: dict[str, Any] = {}
    public = _walk(parameters, (), found, _stored(ciphertext))
    return public, (encrypt_secret(json.dumps(found, sort_keys=True)) if found else "")


def parameters_merge(parameters: Any, ciphertext: str) -> Any:
    """The parameters with their secret values put back (for the model call only; never shown)."""
    merged = copy.deepcopy(parameters)
    for pointer, value in _stored(ciphertext).items():
        node = merged
        parts = pointer.split("/")
        try:
            for part in parts[:-1]:
                node = node[int(part)] if isinstance(node, list) else node[part]
            last = parts[-1]
            if isinstance(node, dict) and node.get(last) == REDACTED:
                node[last] = value
        except (KeyError, IndexError, ValueError, TypeError):
            continue  # the key was removed since: its secret is gone too
    return merged
