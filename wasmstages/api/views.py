"""API of WebAssembly stage modules: list and read versions; upload a new version (multipart `file`)."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status
from rest_framework.exceptions import ValidationError as ApiValidationError
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response

from dataflare_portal.core.api.base import PortalReadOnlyViewSet

from ..models import WasmModule
from ..services import MAX_MODULE_BYTES, wasm_module_upload
from .serializers import WasmModuleSerializer, WasmModuleUploadSerializer


class WasmModuleViewSet(mixins.CreateModelMixin, PortalReadOnlyViewSet):
    """Module versions, newest first per name; POST uploads the next version (immutable, never deleted)."""

    queryset = WasmModule.objects.defer("content").select_related("uploaded_by").order_by("name", "-version")
    serializer_class = WasmModuleSerializer
    filterset_fields = ["name", "version", "sha256"]
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(request=WasmModuleUploadSerializer, responses={201: WasmModuleSerializer})
    def create(self, request, *args, **kwargs):
        form = WasmModuleUploadSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        upload = form.validated_data["file"]
        try:
            row = wasm_module_upload(
                name=form.validated_data["name"],
                content=upload.read(MAX_MODULE_BYTES + 1),
                description=form.validated_data["description"],
                actor=request.user,
            )
        except ValidationError as exc:
            detail = exc.message_dict
            if "content" in detail:
                detail["file"] = detail.pop("content")
            raise ApiValidationError(detail) from None
        return Response(WasmModuleSerializer(row).data, status=status.HTTP_201_CREATED)
