"""AUTH_MODE=oidc: sign-in through an OpenID Connect provider, and the provider's bearer tokens on the API.

- Discovery: the provider's endpoints come from `OIDC_ISSUER/.well-known/openid-configuration`, fetched
  once and cached (process and cache, `OIDC_DISCOVERY_TTL`); the document must name the configured issuer.
- Sign-in: mozilla-django-oidc's authorization code flow with PKCE (S256) and a nonce (`OidcSignInView`,
  `OidcCallbackView`, `OidcBackend`). The ID token is checked against the provider's keys, issuer, audience
  (our client id) and expiry. Users are found by (issuer, subject) in `OidcIdentity`, created on first
  sign-in, their name and email updated, and their portal role re-evaluated from `OIDC_ROLE_CLAIM` through
  `OIDC_ROLE_MAP` at every sign-in (a demotion at the provider demotes here). No mapped value: signed in
  without a role, which the sign-in page says and every page refuses.
- Single logout: the portal's sign-out also ends the provider's session through its `end_session_endpoint`
  when it advertises one.
- Break-glass: `/login/?local=1` takes a password from local administrators only (no OIDC identity),
  audited as a break-glass sign-in.
- API: `ProviderTokenAuthentication` accepts the provider's JWT access tokens whose audience is
  `OIDC_API_AUDIENCE`, checked against the provider's JWKS, issuer and expiry; each refusal names its reason.

The provider is the administrator's choice (environment), not user input: the portal fetches only the
issuer's discovery document and the endpoints it advertises (https unless the issuer is on loopback).
"""

from __future__ import annotations

import logging
import threading
import time
from urllib.parse import urlencode, urlsplit

import jwt
import requests
from django.conf import settings
from django.contrib import auth
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.exceptions import SuspiciousOperation
from django.db import transaction
from django.http import Http404, HttpResponseRedirect
from django.shortcuts import render
from django.utils import timezone
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.utils import import_from_settings
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication

from .models import AuditAction, OidcIdentity
from .oidc_settings import is_loopback_host, parse_role_map
from .services import ROLE_ADMIN, ROLE_OPERATOR, ROLE_VIEWER, ROLES, audit_record, audit_snapshot, roles_ensure

__all__ = [
    "OidcBackend",
    "OidcCallbackView",
    "OidcSignInView",
    "ProviderError",
    "ProviderTokenAuthentication",
    "form_action_sources",
    "oidc_user_sync",
    "provider_logout_url",
    "provider_metadata",
    "role_from_claims",
]

logger = logging.getLogger("dataflare.security")
RANK = {ROLE_VIEWER: 1, ROLE_OPERATOR: 2, ROLE_ADMIN: 3}
_CACHE_KEY = "dataflare:oidc-discovery:"
_local = {"metadata": {}, "jwks": {}}
_lock = threading.Lock()


class ProviderError(Exception):
    """The provider cannot be reached or answered something unusable (message safe to show)."""


# ---- Discovery ------------------------------------------------------------------------------
def _check_endpoint(name: str, url: str) -> str:
    parts = urlsplit(url or "")
    if parts.scheme == "https" and parts.hostname:
        return url
    issuer_host = urlsplit(settings.OIDC_ISSUER).hostname or ""
    if parts.scheme == "http" and is_loopback_host(parts.hostname or "") and is_loopback_host(issuer_host):
        return url  # a provider on loopback (development, the tests)
    raise ProviderError(gettext("The provider's %(name)s is not an https URL.") % {"name": name})


def provider_metadata(*, fetch: bool = True) -> dict:
    """The issuer's discovery document (cached); {} when `fetch` is False and nothing is cached yet."""
    issuer = settings.OIDC_ISSUER
    now = time.monotonic()
    entry = _local["metadata"].get(issuer)
    if entry and entry[0] > now:
        return entry[1]
    data = cache.get(_CACHE_KEY + issuer)
    if data is None:
        if not fetch:
            return {}
        data = _fetch_metadata(issuer)
        cache.set(_CACHE_KEY + issuer, data, timeout=settings.OIDC_DISCOVERY_TTL)
    _local["metadata"][issuer] = (now + settings.OIDC_DISCOVERY_TTL, data)
    return data


def provider_metadata_forget() -> None:
    """Drop the cached discovery document and keys (tests; an administrator changing provider)."""
    issuer = settings.OIDC_ISSUER
    cache.delete(_CACHE_KEY + issuer)
    _local["metadata"].clear()
    _local["jwks"].clear()


def _fetch_metadata(issuer: str) -> dict:
    url = issuer + "/.well-known/openid-configuration"
    try:
        response = requests.get(url, timeout=settings.OIDC_HTTP_TIMEOUT, allow_redirects=False)
        response.raise_for_status()
        data = response.json()
    except (requests.RequestException, ValueError) as exc:
        logger.warning("OIDC discovery at %s failed: %s", url, exc)
        raise ProviderError(gettext("The identity provider's configuration could not be read.")) from exc
    if not isinstance(data, dict) or data.get("issuer", "").rstrip("/") != issuer:
        raise ProviderError(gettext("The identity provider's configuration names another issuer."))
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        _check_endpoint(name, data.get(name, ""))
    for name in ("userinfo_endpoint", "end_session_endpoint"):
        if data.get(name):
            _check_endpoint(name, data[name])
    return data


def _jwks_client() -> jwt.PyJWKClient:
    uri = provider_metadata()["jwks_uri"]
    with _lock:
        client = _local["jwks"].get(uri)
        if client is None:
            # PyJWT refetches on an unknown key id at most once per cooldown, so made-up `kid`s cannot make
            # every request fetch the provider's keys.
            client = jwt.PyJWKClient(
                uri, cache_keys=True, lifespan=settings.OIDC_DISCOVERY_TTL, timeout=settings.OIDC_HTTP_TIMEOUT
            )
            _local["jwks"][uri] = client
    return client


def form_action_sources() -> list[str]:
    """Origins the CSP `form-action` must allow: the provider (sign-out posts end there)."""
    if settings.AUTH_MODE != "oidc" or not settings.OIDC_ISSUER:
        return []
    origins = []
    urls = [settings.OIDC_ISSUER]
    try:
        meta = provider_metadata(fetch=False)
    except Exception:
        meta = {}
    urls += [meta.get("end_session_endpoint") or "", meta.get("authorization_endpoint") or ""]
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme and parts.netloc:
            origin = f"{parts.scheme}://{parts.netloc}"
            if origin not in origins:
                origins.append(origin)
    return origins


# ---- Roles and users --------------------------------------------------------------------------
def _claim(claims: dict, path: str):
    value = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def role_from_claims(claims: dict) -> str | None:
    """The highest portal role the claim's values map to (OIDC_ROLE_MAP), or None."""
    values = _claim(claims, settings.OIDC_ROLE_CLAIM)
    if isinstance(values, str):
        values = values.split()
    if not isinstance(values, (list, tuple)):
        return None
    mapping = parse_role_map(settings.OIDC_ROLE_MAP)
    roles = {mapping[v] for v in values if isinstance(v, str) and v in mapping}
    return max(roles, key=RANK.__getitem__) if roles else None


def _username_for(claims: dict, subject: str) -> str:
    User = get_user_model()
    base = _claim(claims, settings.OIDC_USERNAME_CLAIM) or claims.get("email") or subject
    base = "".join(c for c in str(base) if c.isalnum() or c in "@.+-_")[:120] or "oidc-user"
    name, n = base, 1
    while User.objects.filter(username=name).exists():
        n += 1
        name = f"{base}-{n}"  # a provider account never takes over a local account of the same name
    return name


def _valid_email(value: str) -> bool:
    from django.core.exceptions import ValidationError
    from django.core.validators import validate_email

    try:
        validate_email(value)
    except ValidationError:
        return False
    return len(value) <= 254


def _set_role(user, role: str | None) -> None:
    groups = roles_ensure()
    keep = [g for g in user.groups.all() if g.name not in ROLES]
    user.groups.set(keep + ([groups[role]] if role else []))


def oidc_user_sync(*, issuer: str, claims: dict, via: str = "sign-in"):
    """Find or create the user of (issuer, sub), update name, email and role from the claims; audited.

    `via` is "sign-in" (every browser sign-in is audited) or "token" (an API bearer token: audited when it
    creates the user or changes the role). Returns (user, role).
    """
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject or len(subject) > 255:
        raise SuspiciousOperation("the provider's claims carry no usable subject (sub)")
    role = role_from_claims(claims)
    User = get_user_model()
    with transaction.atomic():
        identity = (
            OidcIdentity.objects.select_for_update()
            .select_related("user")
            .filter(issuer=issuer, subject=subject)
            .first()
        )
        created = identity is None
        before = None if created else audit_snapshot(identity)
        if created:
            user = User(username=_username_for(claims, subject))
            user.set_unusable_password()
            user.save()
            identity = OidcIdentity(issuer=issuer, subject=subject, user=user)
        user = identity.user
        if via == "token" and not created and identity.role == (role or ""):
            return user, role
        email = claims.get("email")
        if isinstance(email, str) and _valid_email(email):
            user.email = email
        user.first_name = str(claims.get("given_name") or user.first_name or "")[:150]
        user.last_name = str(claims.get("family_name") or user.last_name or "")[:150]
        user.is_staff = role is not None
        user.is_superuser = False  # the role groups carry the rights; the provider never makes a superuser
        user.full_clean(exclude=["password"])
        user.save()
        _set_role(user, role)
        identity.role = role or ""
        identity.last_seen = timezone.now()
        identity.full_clean(exclude=["user"])
        identity.save()
        provider = settings.OIDC_PROVIDER_NAME
        if via == "sign-in":
            message = (
                f"signed in through {provider} as {role}" if role else f"signed in through {provider} without a role"
            )
        else:
            message = f"bearer token from {provider}: role {role or 'none'}"
        audit_record(
            actor=user,
            action=AuditAction.LOGIN,
            instance=identity,
            before=before,
            after=audit_snapshot(identity),
            message=message,
        )
    return user, role


# ---- The sign-in flow (mozilla-django-oidc, endpoints from discovery) --------------------------
_ENDPOINTS = {
    "OIDC_OP_AUTHORIZATION_ENDPOINT": "authorization_endpoint",
    "OIDC_OP_TOKEN_ENDPOINT": "token_endpoint",
    "OIDC_OP_USER_ENDPOINT": "userinfo_endpoint",
    "OIDC_OP_JWKS_ENDPOINT": "jwks_uri",
}


def _setting(attr, *args):
    if attr in _ENDPOINTS:
        return provider_metadata().get(_ENDPOINTS[attr])
    return import_from_settings(attr, *args)


def _require_oidc():
    if settings.AUTH_MODE != "oidc":
        raise Http404("AUTH_MODE is not oidc")


def _failure_page(request, message: str, status: int = 502):
    return render(
        request,
        "registration/oidc_login.html",
        {"oidc_error": message, "provider_name": settings.OIDC_PROVIDER_NAME, "title": _("Log in")},
        status=status,
    )


class OidcSignInView(OIDCAuthenticationRequestView):
    """Start the code flow: state, nonce and PKCE verifier in the session, then off to the provider."""

    get_settings = staticmethod(_setting)

    def __init__(self, *args, **kwargs):  # endpoints are read per request, from discovery
        super(OIDCAuthenticationRequestView, self).__init__(*args, **kwargs)

    def get(self, request):
        _require_oidc()
        try:
            self.OIDC_OP_AUTH_ENDPOINT = _setting("OIDC_OP_AUTHORIZATION_ENDPOINT")
        except ProviderError as exc:
            return _failure_page(request, str(exc))
        self.OIDC_RP_CLIENT_ID = settings.OIDC_CLIENT_ID
        return super().get(request)


class OidcCallbackView(OIDCAuthenticationCallbackView):
    """The provider sends the browser back here with a code; errors become a page that names them."""

    get_settings = staticmethod(_setting)

    def get(self, request):
        _require_oidc()
        try:
            return super().get(request)
        except ProviderError as exc:
            return _failure_page(request, str(exc))
        except (requests.RequestException, SuspiciousOperation, jwt.PyJWTError, KeyError) as exc:
            logger.warning("OIDC sign-in failed: %s", exc)
            return _failure_page(
                request,
                gettext("The sign-in through %(provider)s failed; try again.")
                % {"provider": settings.OIDC_PROVIDER_NAME},
                status=400,
            )

    def login_failure(self):
        return HttpResponseRedirect(self.failure_url)


class OidcBackend(OIDCAuthenticationBackend):
    """mozilla-django-oidc's backend, matched on (issuer, sub), with the ID token fully checked."""

    get_settings = staticmethod(_setting)

    def __init__(self, *args, **kwargs):  # nothing fetched here: Django builds backends for every login
        self.UserModel = get_user_model()

    OIDC_RP_SIGN_ALGO = "RS256"
    OIDC_RP_IDP_SIGN_KEY = None

    @property
    def OIDC_RP_CLIENT_ID(self):
        return settings.OIDC_CLIENT_ID

    @property
    def OIDC_RP_CLIENT_SECRET(self):
        return settings.OIDC_CLIENT_SECRET

    @property
    def OIDC_OP_TOKEN_ENDPOINT(self):
        return provider_metadata()["token_endpoint"]

    @property
    def OIDC_OP_USER_ENDPOINT(self):
        return provider_metadata().get("userinfo_endpoint")

    @property
    def OIDC_OP_JWKS_ENDPOINT(self):
        return provider_metadata()["jwks_uri"]

    def authenticate(self, request, **kwargs):
        if settings.AUTH_MODE != "oidc" or request is None or "code" not in request.GET:
            return None
        return super().authenticate(request, **kwargs)

    def retrieve_matching_jwk(self, token):
        return _jwks_client().get_signing_key_from_jwt(token)

    def get_payload_data(self, token, key):
        return jwt.decode(
            token,
            key,
            algorithms=["RS256", "RS384", "RS512", "PS256", "ES256", "ES384"],
            audience=settings.OIDC_CLIENT_ID,
            issuer=settings.OIDC_ISSUER,
            leeway=settings.OIDC_LEEWAY,
            options={"require": ["exp", "iat", "sub"]},
        )

    def verify_token(self, token, **kwargs):
        payload = self.get_payload_data(token, self.retrieve_matching_jwk(token))
        if payload.get("nonce") != kwargs.get("nonce"):
            raise SuspiciousOperation("JWT Nonce verification failed.")
        return payload

    def get_userinfo(self, access_token, id_token, payload):
        claims = dict(payload)
        if self.OIDC_OP_USER_ENDPOINT:
            info = super().get_userinfo(access_token, id_token, payload)
            if info.get("sub") != payload.get("sub"):
                raise SuspiciousOperation("the userinfo subject differs from the ID token's")
            claims.update(info)
        return claims

    def get_or_create_user(self, access_token, id_token, payload):
        claims = self.get_userinfo(access_token, id_token, payload)
        user, _role = oidc_user_sync(issuer=settings.OIDC_ISSUER, claims=claims)
        return user


def provider_logout_url(request) -> str | None:
    """Where single logout sends the browser (the provider's end_session_endpoint), or None."""
    try:
        endpoint = provider_metadata().get("end_session_endpoint")
    except ProviderError:
        return None
    if not endpoint:
        return None
    params = {
        "client_id": settings.OIDC_CLIENT_ID,
        "post_logout_redirect_uri": request.build_absolute_uri("/login/"),
    }
    id_token = request.session.get("oidc_id_token")
    if id_token:
        params["id_token_hint"] = id_token
    return endpoint + ("&" if "?" in endpoint else "?") + urlencode(params)


# ---- Bearer tokens on the API -------------------------------------------------------------------
class ProviderTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer <JWT>` from the provider (AUTH_MODE=oidc with OIDC_API_AUDIENCE set).

    A header that is not a JWT is left to the portal's own tokens. A JWT is checked in this order, each
    failure a 401 with its own code: issuer (`token_issuer`), the provider's keys (`provider_keys_unavailable`),
    signature (`token_signature`), expiry (`token_expired`), audience (`token_audience`), anything else
    (`token_invalid`). The user's role comes from the token's claims, like a sign-in.
    """

    def authenticate(self, request):
        if settings.AUTH_MODE != "oidc" or not settings.OIDC_API_AUDIENCE:
            return None
        parts = request.META.get("HTTP_AUTHORIZATION", "").split()
        if len(parts) != 2 or parts[0].lower() != "bearer" or parts[1].count(".") != 2:
            return None
        token = parts[1]
        claims = self._validate(token)
        user, _role = oidc_user_sync(issuer=settings.OIDC_ISSUER, claims=claims, via="token")
        if not user.is_active:
            raise exceptions.AuthenticationFailed(_("This account is inactive."), code="inactive")
        return user, claims

    def authenticate_header(self, request):
        return 'Bearer realm="api"'

    @staticmethod
    def _fail(message, code):
        raise exceptions.AuthenticationFailed(message, code=code)

    def _validate(self, token: str) -> dict:
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            self._fail(_("The bearer token is not a readable JWT."), "token_invalid")
        if not isinstance(unverified, dict) or str(unverified.get("iss", "")).rstrip("/") != settings.OIDC_ISSUER:
            self._fail(_("The access token was issued by another issuer."), "token_issuer")
        if header.get("alg") in (None, "none") or str(header.get("alg", "")).startswith("HS"):
            self._fail(_("The access token's signature algorithm is not accepted."), "token_signature")
        try:
            key = _jwks_client().get_signing_key_from_jwt(token)
        except ProviderError:
            self._fail(_("The identity provider's signing keys could not be read."), "provider_keys_unavailable")
        except jwt.PyJWKClientConnectionError:
            self._fail(_("The identity provider's signing keys could not be read."), "provider_keys_unavailable")
        except jwt.PyJWKClientError:
            # Keys were read, but none has this token's key id: not signed by this provider.
            self._fail(_("The access token's signature is not valid."), "token_signature")
        try:
            return jwt.decode(
                token,
                key,
                algorithms=[header["alg"]],
                audience=settings.OIDC_API_AUDIENCE,
                issuer=settings.OIDC_ISSUER,
                leeway=settings.OIDC_LEEWAY,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.InvalidSignatureError:
            self._fail(_("The access token's signature is not valid."), "token_signature")
        except jwt.ExpiredSignatureError:
            self._fail(_("The access token has expired."), "token_expired")
        except jwt.InvalidAudienceError:
            self._fail(_("The access token is meant for another audience."), "token_audience")
        except jwt.InvalidIssuerError:
            self._fail(_("The access token was issued by another issuer."), "token_issuer")
        except jwt.PyJWTError as exc:
            self._fail(_("The access token is not valid: %(reason)s") % {"reason": exc}, "token_invalid")


def sign_in_audit_break_glass(request, user) -> None:
    """Audit a local administrator's password sign-in while AUTH_MODE=oidc (and warn in the security log)."""
    logger.warning("break-glass local sign-in by %s from %s", user.get_username(), request.META.get("REMOTE_ADDR"))
    audit_record(
        actor=user,
        action=AuditAction.LOGIN,
        object_type="auth.user",
        object_id=str(user.pk),
        object_repr=user.get_username(),
        message="break-glass local administrator sign-in (AUTH_MODE=oidc)",
    )


def logout_then_provider(request):
    """Sign out here, then at the provider when it offers single logout; the URL to send the browser to."""
    url = provider_logout_url(request) if request.session.get("oidc_id_token") else None
    auth.logout(request)
    return url


class _ProviderTokenScheme(OpenApiAuthenticationExtension):
    """How the OpenAPI schema describes the provider's bearer tokens (AUTH_MODE=oidc)."""

    target_class = ProviderTokenAuthentication
    name = "providerBearer"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "AUTH_MODE=oidc: an access token from the OpenID provider, for the OIDC_API_AUDIENCE.",
        }
