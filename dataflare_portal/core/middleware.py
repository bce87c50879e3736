"""Request id, the AUTH_MODE=none operator, and the security headers (CSP, no-store for the API)."""

import re
import secrets
import uuid

from django.conf import settings

from .metrics_endpoint import request_observed
from .requestctx import request_id_var

_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestIdMiddleware:
    """Give every request an id (honouring a sane incoming X-Request-ID) and return it."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        incoming = request.headers.get("X-Request-ID", "")
        rid = incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex
        request.request_id = rid
        token = request_id_var.set(rid)
        try:
            response = self.get_response(request)
        finally:
            request_id_var.reset(token)
        response["X-Request-ID"] = rid
        request_observed(request, response)
        return response


class AuthModeMiddleware:
    """With AUTH_MODE=none every request acts as the built-in operator, so audits name an actor."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if settings.AUTH_MODE == "none" and not request.user.is_authenticated:
            from .services import builtin_operator

            request.user = builtin_operator()
            request._cached_user = request.user
        return self.get_response(request)


# Everything the portal serves comes from itself (plotly, Swagger UI and ReDoc are local files).
# Inline scripts need the per-request nonce; inline styles stay allowed (plotly and the admin set
# style attributes); workers from blob: are ReDoc's.
CSP_POLICY = (
    "default-src 'self'; "
    "script-src 'self' 'nonce-{nonce}'; "
    "style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; "
    "font-src 'self' data:; "
    "connect-src 'self'; "
    "worker-src 'self' blob:; "
    "object-src 'none'; "
    "base-uri 'self'; "
    "form-action 'self'; "
    "frame-ancestors 'none'"
)


class SecurityHeadersMiddleware:
    """Content-Security-Policy on every response; Cache-Control: no-store on API responses.

    Templates with an inline script mark it `nonce="{{ request.csp_nonce }}"`.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.csp_nonce = secrets.token_urlsafe(16)
        response = self.get_response(request)
        policy = CSP_POLICY.format(nonce=request.csp_nonce)
        if settings.AUTH_MODE == "oidc":
            # Sign-out posts end at the identity provider (single logout): allow its origin as a form target.
            from .oidc import form_action_sources

            sources = " ".join(form_action_sources())
            if sources:
                policy = policy.replace("form-action 'self'", f"form-action 'self' {sources}")
        response.setdefault("Content-Security-Policy", policy)
        if request.path.startswith("/api/"):
            # API answers carry operational data (and token responses): never kept by a browser or proxy cache.
            response["Cache-Control"] = "no-store"
        return response


class ProbeMiddleware:
    """Answer the orchestrators' anonymous /healthz and /readyz before host validation and the HTTPS redirect.

    kubelet (and Docker's health check) call the pod's own address over plain HTTP, with that address as
    the Host: behind it, `ALLOWED_HOSTS` would answer 400 and `SECURE_SSL_REDIRECT` 301, and a healthy pod
    would be restarted. Such a probe gets exactly the anonymous answer (up; ready or not ready, nothing
    more). A request that carries a session cookie or an Authorization header takes the normal way, so a
    signed-in user still reaches /readyz's details through the real host name. With AUTH_MODE=none every
    request is the built-in operator and the portal listens on loopback only: nothing to answer early.
    """

    def __init__(self, get_response):
        from django.contrib.auth.models import AnonymousUser

        from . import health

        self.get_response = get_response
        self.views = {"/healthz": health.healthz, "/readyz": health.readyz}
        self.anonymous = AnonymousUser

    def __call__(self, request):
        view = self.views.get(request.path_info)
        if (
            view is None
            or settings.AUTH_MODE == "none"
            or request.method not in ("GET", "HEAD")
            or settings.SESSION_COOKIE_NAME in request.COOKIES
            or "HTTP_AUTHORIZATION" in request.META
        ):
            return self.get_response(request)
        request.user = self.anonymous()
        return view(request)
