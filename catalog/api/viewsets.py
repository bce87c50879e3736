"""Catalog API: declarative viewsets; non-CRUD commands (test, profile, preview) call one service each."""

from django.utils.translation import gettext as _
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions
from rest_framework.decorators import action
from rest_framework.response import Response

from dataflare_portal.core.api.base import PortalModelViewSet, PortalReadOnlyViewSet

from .. import services
from ..connectors import ConnectorError
from ..filtersets import DatasetFilterSet, DatasetVersionFilterSet, DataSourceFilterSet, ProjectFilterSet
from ..models import Dataset, DatasetVersion, DataSource, Project
from . import serializers as s


def _connector_error(exc: Exception) -> exceptions.ValidationError:
    field = getattr(exc, "field", None) or "non_field_errors"
    return exceptions.ValidationError({field: [str(getattr(exc, "message", exc))]})


class ProjectViewSet(PortalModelViewSet):
    queryset = Project.objects.all()
    serializer_class = s.ProjectSerializer
    brief_serializer_class = s.ProjectBriefSerializer
    filterset_class = ProjectFilterSet
    ordering_fields = ["name", "created_at"]


class DataSourceViewSet(PortalModelViewSet):
    queryset = DataSource.objects.select_related("project")
    serializer_class = s.DataSourceSerializer
    brief_serializer_class = s.DataSourceBriefSerializer
    filterset_class = DataSourceFilterSet
    ordering_fields = ["name", "kind", "status", "last_checked_at", "created_at"]
    operator_actions = ("test", "upload")

    def perform_create(self, serializer):
        data = dict(serializer.validated_data)
        password = data.pop("password", None)
        secret = dict(data.pop("secret", None) or {})
        if password:
            secret["password"] = password
        serializer.instance = services.datasource_create(
            actor=self.request.user,
            project=data["project"],
            name=data["name"],
            kind=data["kind"],
            config=data.get("config") or {},
            secret=secret or None,
            description=data.get("description", ""),
        )

    def perform_update(self, serializer):
        data = dict(serializer.validated_data)
        extra = {}
        if "secret" in data:
            extra["secret"] = dict(data.pop("secret") or {}) or None
        if "password" in data:
            password = data.pop("password")
            if "secret" in extra:
                if password:
                    extra["secret"] = {**(extra["secret"] or {}), "password": password}
            else:
                extra["secret"] = {"password": password} if password else None
        source = DataSource.objects.get(pk=serializer.instance.pk)
        serializer.instance = services.datasource_update(actor=self.request.user, source=source, **data, **extra)

    @extend_schema(request=None, responses=s.ConnectionResultSerializer, summary="Test the connection")
    @action(detail=True, methods=["post"])
    def test(self, request, pk=None):
        source = self.get_object()
        result = services.datasource_test_connection(actor=request.user, source=source)
        return Response(
            {
                "ok": result.ok,
                "detail": result.detail,
                "latency_ms": round(result.latency_ms, 2),
                "status": source.status,
                "last_checked_at": source.last_checked_at,
            }
        )

    @extend_schema(
        request={"multipart/form-data": s.UploadRequestSerializer},
        responses={201: s.UploadResultSerializer},
        summary="Upload a file as a new dataset",
    )
    @action(detail=True, methods=["post"])
    def upload(self, request, pk=None):
        """Stream a file into this files source; answers with the new dataset and its version 1 (sha256)."""
        source = self.get_object()
        data = request.data  # parsing streams the file (the upload handlers cut off one over the cap)
        refused = getattr(request._request, "upload_refused", None)
        if refused:
            raise exceptions.ValidationError(
                {
                    "file": [
                        _("The file is larger than the upload limit of %(limit)s bytes.") % {"limit": f"{refused[1]:,}"}
                    ]
                }
            )
        params = s.UploadRequestSerializer(data=data)
        params.is_valid(raise_exception=True)
        upload = params.validated_data["file"]
        version = services.dataset_upload(
            actor=request.user,
            source=source,
            name=params.validated_data["name"],
            location=params.validated_data.get("location") or upload.name,
            description=params.validated_data.get("description", ""),
            chunks=upload.chunks(),
        )
        body = {"dataset": version.dataset, "version": version}
        return Response(s.UploadResultSerializer(body, context={"request": request}).data, status=201)


class DatasetViewSet(PortalModelViewSet):
    queryset = Dataset.objects.select_related("project", "source")
    serializer_class = s.DatasetSerializer
    brief_serializer_class = s.DatasetBriefSerializer
    filterset_class = DatasetFilterSet
    ordering_fields = ["name", "row_count", "profiled_at", "created_at"]
    operator_actions = ("profile",)

    @extend_schema(request=s.ProfileRequestSerializer, responses=s.ProfileSerializer, summary="Profile the dataset")
    @action(detail=True, methods=["post"])
    def profile(self, request, pk=None):
        dataset = self.get_object()
        params = s.ProfileRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        try:
            result = services.dataset_profile(actor=request.user, dataset=dataset, **params.validated_data)
        except (ConnectorError, OSError) as exc:
            raise _connector_error(exc) from None
        return Response(s.ProfileSerializer(result).data)

    @extend_schema(parameters=[s.PreviewQuerySerializer], responses=s.PreviewSerializer, summary="Sample records")
    @action(detail=True, methods=["get"])
    def preview(self, request, pk=None):
        dataset = self.get_object()
        params = s.PreviewQuerySerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        try:
            records = services.dataset_preview(dataset=dataset, limit=params.validated_data["limit"])
        except (ConnectorError, OSError) as exc:
            raise _connector_error(exc) from None
        return Response({"records": records})


class DatasetVersionViewSet(PortalReadOnlyViewSet):
    """Published versions are created by the publish service only; the API reads them with their lineage."""

    queryset = DatasetVersion.objects.select_related("dataset").prefetch_related("parents", "children")
    serializer_class = s.DatasetVersionSerializer
    brief_serializer_class = s.DatasetVersionBriefSerializer
    filterset_class = DatasetVersionFilterSet
    ordering_fields = ["version", "created_at", "published_at"]

    def get_queryset(self):
        qs = super().get_queryset()
        if self.request is not None and self.request.query_params.get("brief"):
            return DatasetVersion.objects.all()
        return qs

    @extend_schema(parameters=[s.DiffQuerySerializer], responses=s.DiffSerializer, summary="Compare two versions")
    @action(detail=True, methods=["get"])
    def diff(self, request, pk=None):
        version = self.get_object()
        params = s.DiffQuerySerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        other = (
            DatasetVersion.objects.select_related("dataset", "dataset__source")
            .filter(pk=params.validated_data["against"])
            .first()
        )
        if other is None:
            raise exceptions.ValidationError({"against": [_("No such dataset version.")]})
        try:
            result = services.dataset_version_diff(
                left=version, right=other, key=params.validated_data.get("key"), sample=params.validated_data["sample"]
            )
        except (ConnectorError, OSError) as exc:
            raise _connector_error(exc) from None
        return Response(result)


__all__ = ["DatasetViewSet", "DatasetVersionViewSet", "DataSourceViewSet", "ProjectViewSet"]
