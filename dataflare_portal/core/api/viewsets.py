from django.utils.translation import gettext as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import exceptions, viewsets
from rest_framework.response import Response

from .. import config
from ..filtersets import AuditLogEntryFilterSet
from ..models import AuditLogEntry
from .base import PortalReadOnlyViewSet, StrictQueryParamsMixin
from .serializers import AuditLogEntrySerializer, ConfigSettingSerializer, ConfigWriteSerializer


def _config_row(key: str) -> dict:
    for row in config.config_all():
        if row["key"] == key:
            return row
    raise exceptions.NotFound(_("No setting named %(key)s.") % {"key": key})


@extend_schema_view(
    list=extend_schema(
        summary="List the system settings with effective values and sources",
        parameters=[
            OpenApiParameter("group", OpenApiTypes.STR, description="Only settings of this group."),
            OpenApiParameter(
                "source", OpenApiTypes.STR, enum=["default", "env", "file", "database"], description="Only this source."
            ),
        ],
    ),
    retrieve=extend_schema(summary="One system setting"),
    update=extend_schema(summary="Set a system setting", request=ConfigWriteSerializer),
    partial_update=extend_schema(summary="Set a system setting", request=ConfigWriteSerializer),
)
class SystemConfigViewSet(StrictQueryParamsMixin, viewsets.ViewSet):
    """Typed system settings: env < config.json < database overrides; changes apply without restart."""

    extra_query_params = ("group", "source")

    lookup_field = "key"
    lookup_value_regex = "[A-Za-z0-9_]+"
    serializer_class = ConfigSettingSerializer

    def list(self, request):
        rows = config.config_all()
        group, source = request.query_params.get("group"), request.query_params.get("source")
        if group:
            rows = [r for r in rows if r["setting"].group == group]
        if source:
            rows = [r for r in rows if r["source"] == source]
        return Response(ConfigSettingSerializer(rows, many=True).data)

    def retrieve(self, request, key=None):
        return Response(ConfigSettingSerializer(_config_row(key)).data)

    def update(self, request, key=None):
        _config_row(key)
        write = ConfigWriteSerializer(data=request.data)
        write.is_valid(raise_exception=True)
        value = write.validated_data.get("value")
        if value is None:
            config.config_reset(key=key, actor=request.user)
        else:
            config.config_set(key=key, value=value, actor=request.user)
        return Response(ConfigSettingSerializer(_config_row(key)).data)

    def partial_update(self, request, key=None):
        return self.update(request, key=key)


class AuditLogEntryViewSet(PortalReadOnlyViewSet):
    """The audit log: every write and operator action (read-only)."""

    queryset = AuditLogEntry.objects.select_related(None)
    serializer_class = AuditLogEntrySerializer
    filterset_class = AuditLogEntryFilterSet
    search_fields = ["object_repr", "actor_name", "message"]
    ordering_fields = ["timestamp", "id"]
