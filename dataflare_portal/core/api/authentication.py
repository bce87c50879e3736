"""API authentication: user tokens as `Token` or `Bearer`, and the local API token of AUTH_MODE=none.

Browsers keep session cookies plus CSRF; a non-browser client sends a header instead, so a
malicious page cannot post to 127.0.0.1 with the operator's rights (it cannot read the token).

- `PortalTokenAuthentication`: DRF's per-user tokens, sent as `Authorization: Token <key>` or
  `Authorization: Bearer <key>`.
- `LocalTokenAuthentication`: with AUTH_MODE=none, the token in `DATA_DIR/api_token` (generated on
  first start, mode 0600; `scripts/dev` prints it) acts as the built-in operator.
"""

from __future__ import annotations

import hmac
from pathlib import Path

from django.conf import settings
from django.utils.translation import gettext_lazy as _
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, TokenAuthentication, get_authorization_header

__all__ = ["LocalTokenAuthentication", "PortalTokenAuthentication", "local_api_token"]

KEYWORDS = (b"token", b"bearer")


def _credentials(request) -> str | None:
    """The token of an `Authorization: Token|Bearer <token>` header, or None when there is none."""
    auth = get_authorization_header(request).split()
    if not auth or auth[0].lower() not in KEYWORDS:
        return None
    if len(auth) != 2:
        raise exceptions.AuthenticationFailed(_("Invalid token header: expected '<Token|Bearer> <token>'."))
    try:
        return auth[1].decode("ascii")
    except UnicodeError:
        raise exceptions.AuthenticationFailed(_("Invalid token header: the token must be ASCII."))


def local_api_token() -> str:
    """The local API token of AUTH_MODE=none ('' when the file is missing or empty)."""
    try:
        return Path(settings.LOCAL_API_TOKEN_FILE).read_text().strip()
    except OSError:
        return ""


class PortalTokenAuthentication(TokenAuthentication):
    """DRF token authentication that also accepts the `Bearer` keyword."""

    def authenticate(self, request):
        key = _credentials(request)
        if key is None:
            return None
        return self.authenticate_credentials(key)


class LocalTokenAuthentication(BaseAuthentication):
    """AUTH_MODE=none: the local API token acts as the built-in operator (no session, so no CSRF)."""

    def authenticate(self, request):
        if settings.AUTH_MODE != "none":
            return None
        key = _credentials(request)
        expected = local_api_token()
        if key is None or not expected or not hmac.compare_digest(key.encode(), expected.encode()):
            return None  # maybe a user token: the next class decides
        from ..services import builtin_operator

        return builtin_operator(), None

    def authenticate_header(self, request):
        return "Token"


# ---- OpenAPI: how the schema describes both ---------------------------------------------------
class _PortalTokenScheme(OpenApiAuthenticationExtension):
    target_class = PortalTokenAuthentication
    name = "tokenAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": 'A user token (AUTH_MODE=local) with the prefix "Token" or "Bearer".',
        }


class _LocalTokenScheme(OpenApiAuthenticationExtension):
    target_class = LocalTokenAuthentication
    name = "localApiToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "AUTH_MODE=none: the local API token from DATA_DIR/api_token.",
        }
