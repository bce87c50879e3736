"""API views outside the routers: the API root, the token endpoint and the reserved logs endpoint."""

from django.contrib.auth import authenticate
from django.utils.translation import gettext as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, status
from rest_framework.authtoken.models import Token
from rest_framework.decorators import api_view
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.views import APIView

from ..auth import LoginRateThrottle, login_blocked
from ..models import AuditAction
from ..services import audit_record
from .exceptions import NotImplementedYet
from .schema import ErrorSerializer
from .serializers import TokenRequestSerializer, TokenSerializer

API_SECTIONS = {
    "catalog": "catalog-api:api-root",
    "pipelines": "pipelines-api:api-root",
    "tasks": "tasks-api:api-root",
    "metrics": "metrics-api:api-root",
    "alerts": "alerts-api:api-root",
    "schedules": "schedules-api:api-root",
    "wasm": "wasmstages-api:api-root",
    "system": "core-api:api-root",
    "logs": "core-api:logs",
    "token": "core-api:auth-token",
}


@extend_schema(summary="Index of the API sections", responses={200: OpenApiTypes.OBJECT})
@api_view(["GET"])
def api_root(request, format=None):
    """Index of the API sections."""
    return Response({name: reverse(view, request=request, format=format) for name, view in API_SECTIONS.items()})


class TooManyLogins(exceptions.Throttled):
    default_detail = "Too many failed logins; try again later."
    default_code = "login_rate_limited"


class AuthTokenView(APIView):
    """Exchange a username and password for an API token (rate-limited like the login page)."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes = [LoginRateThrottle]

    @extend_schema(
        summary="Obtain an API token",
        request=TokenRequestSerializer,
        responses={200: TokenSerializer, 400: ErrorSerializer, 429: ErrorSerializer},
        auth=[],
    )
    def post(self, request):
        data = TokenRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        username = data.validated_data["username"]
        if login_blocked(request, username):
            raise TooManyLogins()
        user = authenticate(request=request._request, username=username, password=data.validated_data["password"])
        if user is None:
            if getattr(request._request, "login_rate_limited", False):
                raise TooManyLogins()
            raise exceptions.ValidationError({"non_field_errors": [_("Unable to log in with these credentials.")]})
        if not user.is_active:
            raise exceptions.ValidationError({"non_field_errors": [_("This account is inactive.")]})
        token, created = Token.objects.get_or_create(user=user)
        audit_record(
            actor=user,
            action=AuditAction.LOGIN,
            object_type="authtoken.token",
            object_id=str(user.pk),
            object_repr=user.get_username(),
            message="API token issued" if created else "API token fetched",
        )
        return Response({"token": token.key}, status=status.HTTP_200_OK)


class LogsView(APIView):
    """Reserved: run and worker logs will be served here (the PRD keeps this a placeholder)."""

    @extend_schema(
        summary="Logs (reserved)",
        description=(
            "Reserved for run and worker logs. It answers 501 with the standard error shape until the log "
            "store exists; use the run detail API (stage runs, batches, errors) and the audit log meanwhile."
        ),
        responses={501: ErrorSerializer},
    )
    def get(self, request):
        raise NotImplementedYet(
            _("The logs endpoint is reserved and not implemented yet; see the run detail endpoints and the audit log.")
        )
