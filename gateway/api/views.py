"""API of gateway keys (operator creates, updates and revokes; viewer reads metadata) and the per-key request log."""

from __future__ import annotations

import django_filters
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from dataflare_portal.core.api.base import PortalModelViewSet, PortalReadOnlyViewSet
from dataflare_portal.core.services import ROLE_OPERATOR

from .. import services
from ..models import GatewayKey, GatewayRequest
from .serializers import GatewayKeyCreatedSerializer, GatewayKeySerializer, GatewayRequestSerializer


def _django_errors(exc: DjangoValidationError) -> ValidationError:
    return ValidationError(exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages})


class GatewayKeyViewSet(PortalModelViewSet):
    """Gateway API keys. POST creates one and answers its `key` once; POST …/revoke/ revokes it (no delete:
    a revoked key keeps its usage history)."""

    queryset = GatewayKey.objects.select_related("project").prefetch_related("allowed_models").order_by("id")
    serializer_class = GatewayKeySerializer
    filterset_fields = ["project", "name", "prefix", "store_prompts"]
    search_fields = ["name", "prefix"]
    ordering_fields = ["name", "created_at", "last_used_at", "expires_at"]
    http_method_names = ["get", "post", "patch", "head", "options"]
    write_role = ROLE_OPERATOR

    @extend_schema(responses={201: GatewayKeyCreatedSerializer})
    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        try:
            key, text = services.key_create(actor=request.user, **data)
        except DjangoValidationError as exc:
            raise _django_errors(exc) from None
        out = GatewayKeyCreatedSerializer(key, context=self.get_serializer_context()).data
        out["key"] = text
        return Response(out, status=status.HTTP_201_CREATED)

    def perform_update(self, serializer):
        data = dict(serializer.validated_data)
        data.pop("project", None)
        models = data.pop("allowed_models", None)
        try:
            serializer.instance = services.key_update(
                actor=self.request.user, key=serializer.instance, allowed_models=models, **data
            )
        except DjangoValidationError as exc:
            raise _django_errors(exc) from None

    @extend_schema(request=None, responses=GatewayKeySerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        key = services.key_revoke(actor=request.user, key=self.get_object())
        return Response(GatewayKeySerializer(key, context=self.get_serializer_context()).data)


class GatewayRequestFilterSet(django_filters.FilterSet):
    since = django_filters.IsoDateTimeFilter(field_name="ts", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="ts", lookup_expr="lt")

    class Meta:
        model = GatewayRequest
        fields = ["key", "project_id", "endpoint", "model", "http_status", "status_code", "stream"]


class GatewayRequestViewSet(PortalReadOnlyViewSet):
    """The gateway's request log per key (metadata; the body only for keys that store prompts)."""

    queryset = GatewayRequest.objects.select_related("key").order_by("-ts", "-id")
    serializer_class = GatewayRequestSerializer
    filterset_class = GatewayRequestFilterSet
    ordering_fields = ["ts", "latency_ms", "prompt_tokens", "completion_tokens"]
