"""One error shape for the whole API: {"error": {"status", "code", "message", "fields"}, "request_id"}."""

import logging

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError, IntegrityError
from django.db.models import ProtectedError, RestrictedError
from django.http import Http404, JsonResponse
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from ..requestctx import request_id_var

logger = logging.getLogger(__name__)


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The request conflicts with the current state of the object."
    default_code = "conflict"


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "payload_too_large"


class NotImplementedYet(exceptions.APIException):
    status_code = status.HTTP_501_NOT_IMPLEMENTED
    default_detail = "Not implemented."
    default_code = "not_implemented"


def _flatten(detail):
    if isinstance(detail, dict):
        return {str(k): _flatten(v) for k, v in detail.items()}
    if isinstance(detail, list):
        return [_flatten(v) for v in detail]
    return str(detail)


def _first_message(detail) -> str:
    if isinstance(detail, dict):
        for key, value in detail.items():
            msg = _first_message(value)
            return msg if key in ("non_field_errors", "__all__", "detail") else f"{key}: {msg}"
        return "Invalid input."
    if isinstance(detail, list):
        return _first_message(detail[0]) if detail else "Invalid input."
    return str(detail)


def error_body(status_code: int, code: str, message: str, fields=None) -> dict:
    body = {"error": {"status": status_code, "code": code, "message": message}}
    if fields:
        body["error"]["fields"] = fields
    body["request_id"] = request_id_var.get()
    return body


def _protected_message(exc) -> str:
    objs = list(getattr(exc, "protected_objects", None) or getattr(exc, "restricted_objects", None) or [])
    names = ", ".join(f"{o._meta.verbose_name} “{o}”" for o in objs[:5])
    more = _(" and %(n)d more") % {"n": len(objs) - 5} if len(objs) > 5 else ""
    return _("Cannot delete: still used by %(objects)s%(more)s.") % {"objects": names, "more": more}


def _translate(exc):
    """Map Django and service exceptions to DRF API exceptions (None: not an API error)."""
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        return exceptions.ValidationError(detail)
    if isinstance(exc, Http404):
        return exceptions.NotFound()
    if isinstance(exc, DjangoPermissionDenied):
        return exceptions.PermissionDenied()
    if isinstance(exc, RequestDataTooBig):
        return PayloadTooLarge()
    if isinstance(exc, SuspiciousOperation):
        return exceptions.ParseError(str(exc) or None)
    if isinstance(exc, (ProtectedError, RestrictedError)):
        return Conflict(_protected_message(exc))
    if isinstance(exc, (OverflowError, DataError)):
        # A number too large for its column, in a filter or a field (the driver or the database refuses it).
        return exceptions.ValidationError({"non_field_errors": [_("A value is out of range for its field.")]})
    if isinstance(exc, IntegrityError):
        # A race with a concurrent writer past full_clean(); the row did not change.
        logger.warning("integrity error answered as 409: %s", exc)
        return Conflict(_("The change conflicts with existing data (a unique or related row)."))
    # Service-level input errors carry the name of the field they are about (ConnectorError,
    # EndpointRefused, StageConfigError...): a 400 naming that field, never a 500.
    field = getattr(exc, "field", None) or getattr(exc, "path", None)
    if isinstance(exc, ValueError) and field:
        return exceptions.ValidationError({str(field): [str(exc)]})
    return exc


def exception_handler(exc, context):
    exc = _translate(exc)
    response = drf_exception_handler(exc, context)
    if response is None:
        logger.error("unhandled API error", exc_info=exc)
        _render_errors_as_json(context)
        return Response(
            error_body(500, "server_error", "Internal error; the request id identifies it in the logs."),
            status=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )
    detail = exc.detail if isinstance(exc, exceptions.APIException) else response.data
    codes = exc.get_codes() if isinstance(exc, exceptions.APIException) else "error"
    code = codes if isinstance(codes, str) else ("invalid" if isinstance(exc, exceptions.ValidationError) else "error")
    if isinstance(exc, exceptions.ValidationError):
        if not isinstance(detail, dict):
            detail = {"non_field_errors": detail if isinstance(detail, list) else [detail]}
        fields = _flatten(detail)
    else:
        fields = None
    response.data = error_body(response.status_code, code, _first_message(detail), fields)
    _render_errors_as_json(context)
    return response


def _render_errors_as_json(context) -> None:
    """Errors are JSON (or the browsable page), even when the client asked for CSV or another format."""
    request = (context or {}).get("request")
    renderer = getattr(request, "accepted_renderer", None)
    if request is None or getattr(renderer, "media_type", "") in ("application/json", "text/html"):
        return
    request.accepted_renderer = JSONRenderer()
    request.accepted_media_type = "application/json"


# ---- Errors outside DRF views (unknown /api/ URLs, crashes in middleware) --------------------
def _is_api(request) -> bool:
    return request.path.startswith("/api/")


def json_error_response(status_code: int, code: str, message: str) -> JsonResponse:
    return JsonResponse(error_body(status_code, code, message), status=status_code)


def handler404(request, exception=None):
    if _is_api(request):
        return json_error_response(404, "not_found", _("No API endpoint at this URL."))
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


@csrf_exempt  # an unknown URL is a 404 whatever the method; CSRF has nothing to protect here
def api_not_found(request, *args, **kwargs):
    """The last /api/v1/ route: no endpoint matched."""
    return json_error_response(404, "not_found", _("No API endpoint at this URL."))


def csrf_failure(request, reason=""):
    """CSRF_FAILURE_VIEW: the JSON error shape under /api/, Django's page elsewhere."""
    if _is_api(request):
        message = _("CSRF check failed (%(reason)s). Non-browser clients send an Authorization header instead.") % {
            "reason": reason
        }
        return json_error_response(403, "csrf_failed", message)
    from django.views.csrf import csrf_failure as django_csrf_failure

    return django_csrf_failure(request, reason=reason)


def handler500(request):
    if _is_api(request):
        return json_error_response(500, "server_error", _("Internal error; the request id identifies it in the logs."))
    from django.views.defaults import server_error

    return server_error(request)


def handler400(request, exception=None):
    if _is_api(request):
        return json_error_response(400, "bad_request", str(exception) if exception else _("Bad request."))
    from django.views.defaults import bad_request

    return bad_request(request, exception)


def handler403(request, exception=None):
    if _is_api(request):
        return json_error_response(403, "permission_denied", _("You do not have permission to do this."))
    from django.views.defaults import permission_denied

    return permission_denied(request, exception)
