"""Request id and the AUTH_MODE=none operator."""

import re
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
