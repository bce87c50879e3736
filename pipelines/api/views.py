"""API views of the pipelines app: CRUD, validate, template import (dry-run) / export / diff / versions."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.utils.translation import gettext as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response

from catalog.models import Project
from dataflare_portal.core.api.base import PortalModelViewSet, PortalReadOnlyViewSet
from dataflare_portal.core.api.exceptions import error_body

from .. import selectors, services
from ..filtersets import PipelineFilterSet, PipelineStageFilterSet, PipelineTemplateFilterSet, QCPolicyFilterSet
from ..models import Pipeline, PipelineStage, PipelineTemplate, QCPolicy
from ..templates_io import TEMPLATE_JSON_SCHEMA, TemplateInputError
from ..validation import TemplateValidationFailed, template_validate
from .parsers import BoundedJSONParser
from .serializers import (
    DiffQuerySerializer,
    PipelineBriefSerializer,
    PipelineSerializer,
    PipelineStageSerializer,
    PipelineTemplateBriefSerializer,
    PipelineTemplateSerializer,
    QCPolicySerializer,
    TemplateVersionSerializer,
)

TRUE_VALUES = {"1", "true", "yes", "on"}
# Every body these views parse is depth-bounded first (DRF's JSONParser would 500 on deep nesting).
PARSERS = [BoundedJSONParser, FormParser, MultiPartParser]


def _assign(instance, validated_data):
    for name, value in validated_data.items():
        setattr(instance, name, value)
    return instance


def _error(status_code: int, code: str, message: str, fields=None) -> Response:
    return Response(error_body(status_code, code, message, fields), status=status_code)


def template_error_response(exc: Exception) -> Response:
    """The API's one error shape for refused template bodies and failed validation."""
    if isinstance(exc, TemplateInputError):
        return _error(exc.status, exc.code, exc.message, exc.fields())
    if isinstance(exc, TemplateValidationFailed):
        return _error(400, "invalid_template", exc.report.summary(), exc.report.fields())
    raise exc


def read_upload(request) -> bytes:
    """The raw template body (JSON body or a multipart `file`), refusing oversized ones before reading them."""
    limit = settings.MAX_UPLOAD_BYTES
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    content_type = request.content_type or ""
    if content_type.startswith("multipart/form-data"):
        upload = request.FILES.get("file")
        if upload is None:
            raise TemplateInputError(_("Upload the template as the `file` field."), code="required", path="file")
        if upload.size > limit:
            raise TemplateInputError(
                _("The file is %(size)d bytes; the limit is %(limit)d bytes.") % {"size": upload.size, "limit": limit},
                code="too_large",
                status=413,
            )
        return upload.read(limit + 1)
    if declared > limit:
        raise TemplateInputError(
            _("The body is %(size)d bytes; the limit is %(limit)d bytes.") % {"size": declared, "limit": limit},
            code="too_large",
            status=413,
        )
    try:
        return request._request.body
    except RequestDataTooBig:
        raise TemplateInputError(_("The body is over the upload limit."), code="too_large", status=413)


class PipelineViewSet(PortalModelViewSet):
    """Pipelines; writes record a new template version when the pipeline's shape changes."""

    parser_classes = PARSERS

    queryset = selectors.pipelines_with_stage_counts().prefetch_related("stages")
    serializer_class = PipelineSerializer
    brief_serializer_class = PipelineBriefSerializer
    filterset_class = PipelineFilterSet
    search_fields = ["name", "description"]
    ordering_fields = ["name", "created_at", "updated_at"]
    operator_actions = ("validate",)

    def perform_create(self, serializer):
        serializer.instance = services.pipeline_save(
            actor=self.request.user, pipeline=_assign(Pipeline(), serializer.validated_data)
        )

    def perform_update(self, serializer):
        serializer.instance = services.pipeline_save(
            actor=self.request.user, pipeline=_assign(serializer.instance, serializer.validated_data)
        )

    @extend_schema(request=None, responses=OpenApiTypes.OBJECT)
    @action(detail=True, methods=["post"])
    def validate(self, request, pk=None):
        """Validate the pipeline (stage configs, order, references; live checks as warnings)."""
        report = services.pipeline_check(pipeline=self.get_object(), probe=True)
        return Response(report.to_dict())

    @extend_schema(responses=OpenApiTypes.OBJECT)
    @action(detail=True, methods=["get"])
    def export(self, request, pk=None):
        """The pipeline as template JSON (stored as a template version if it changed)."""
        pipeline = self.get_object()
        body, template = services.template_export(pipeline=pipeline, actor=request.user)
        response = Response(body)
        response["Content-Disposition"] = f'attachment; filename="{pipeline.name}-v{template.version}.json"'
        response["X-Template-Version"] = str(template.version)
        return response


class PipelineStageViewSet(PortalModelViewSet):
    parser_classes = PARSERS
    queryset = PipelineStage.objects.select_related("pipeline", "model_config")
    serializer_class = PipelineStageSerializer
    filterset_class = PipelineStageFilterSet
    ordering_fields = ["position"]

    def perform_create(self, serializer):
        serializer.instance = services.stage_save(
            actor=self.request.user, stage=_assign(PipelineStage(), serializer.validated_data)
        )

    def perform_update(self, serializer):
        serializer.instance = services.stage_save(
            actor=self.request.user, stage=_assign(serializer.instance, serializer.validated_data)
        )

    def perform_destroy(self, instance):
        services.stage_delete(actor=self.request.user, stage=instance)


class PipelineTemplateViewSet(PortalReadOnlyViewSet):
    """Immutable template versions, with import (dry-run), export, diff and versions actions."""

    parser_classes = PARSERS

    queryset = PipelineTemplate.objects.select_related("created_by")
    serializer_class = PipelineTemplateSerializer
    brief_serializer_class = PipelineTemplateBriefSerializer
    filterset_class = PipelineTemplateFilterSet
    search_fields = ["name", "description"]
    ordering_fields = ["name", "version", "created_at"]
    operator_actions = ("validate_body",)

    @extend_schema(
        request=OpenApiTypes.OBJECT,
        responses={200: OpenApiTypes.OBJECT, 201: OpenApiTypes.OBJECT},
        parameters=[
            OpenApiParameter("dry_run", OpenApiTypes.BOOL, description="Report what would be created; write nothing."),
            OpenApiParameter("project", OpenApiTypes.STR, description="Import into this project (slug)."),
        ],
    )
    @action(detail=False, methods=["post"], url_path="import")
    def import_template(self, request):
        """Import a template body; `?dry_run=1` reports what would be created and writes nothing."""
        dry_run = str(request.query_params.get("dry_run", "")).lower() in TRUE_VALUES
        project = None
        slug = request.query_params.get("project")
        if slug:
            project = Project.objects.filter(slug=slug).first()
            if project is None:
                return _error(
                    400,
                    "invalid",
                    _("Project %(slug)r does not exist.") % {"slug": slug[:100]},
                    {"project": [_("Unknown project.")]},
                )
        try:
            raw = read_upload(request)
            plan = services.template_import_text(raw=raw, actor=request.user, dry_run=dry_run, project=project)
        except (TemplateInputError, TemplateValidationFailed) as exc:
            return template_error_response(exc)
        return Response(plan.to_dict(), status=status.HTTP_200_OK if dry_run else status.HTTP_201_CREATED)

    @extend_schema(request=OpenApiTypes.OBJECT, responses=OpenApiTypes.OBJECT)
    @action(detail=False, methods=["post"], url_path="validate")
    def validate_body(self, request):
        """Validate a template body without importing it."""
        try:
            from ..templates_io import template_parse

            body = template_parse(read_upload(request))
        except TemplateInputError as exc:
            return template_error_response(exc)
        return Response(template_validate(body).to_dict())

    # Named template_schema (URL still .../schema/): a method called `schema` hides APIView.schema
    # and breaks the OpenAPI generator for the whole API.
    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    @action(detail=False, methods=["get"], url_path="schema", url_name="schema")
    def template_schema(self, request):
        """The JSON Schema of the template format."""
        return Response(TEMPLATE_JSON_SCHEMA)

    @extend_schema(responses=OpenApiTypes.OBJECT)
    @action(detail=True, methods=["get"])
    def export(self, request, pk=None):
        """This version's template JSON, as a download."""
        template = self.get_object()
        response = Response(template.body)
        response["Content-Disposition"] = f'attachment; filename="{template.name}-v{template.version}.json"'
        return response

    @extend_schema(
        responses=OpenApiTypes.OBJECT,
        parameters=[
            OpenApiParameter("against", OpenApiTypes.INT, required=True, description="Version id to compare from.")
        ],
    )
    @action(detail=True, methods=["get"])
    def diff(self, request, pk=None):
        """Structural diff from `?against=<version id>` to this version."""
        after = self.get_object()
        query = DiffQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        before = query.validated_data["against"]
        return Response(
            {
                "before": {"id": before.pk, "name": before.name, "version": before.version},
                "after": {"id": after.pk, "name": after.name, "version": after.version},
                "diff": services.template_versions_diff(before=before, after=after),
            }
        )

    @extend_schema(responses=TemplateVersionSerializer(many=True), filters=False)
    @action(detail=True, methods=["get"], pagination_class=None, filter_backends=[])
    def versions(self, request, pk=None):
        """Every version of this template (newest 200) with its runs' headline numbers: an array."""
        template = self.get_object()
        versions = list(selectors.template_versions(template.name)[:200])
        stats = selectors.template_version_stats([v.pk for v in versions])
        for version in versions:
            version.stats = stats[version.pk]
        return Response(TemplateVersionSerializer(versions, many=True).data)


class QCPolicyViewSet(PortalModelViewSet):
    parser_classes = PARSERS
    queryset = QCPolicy.objects.all()
    serializer_class = QCPolicySerializer
    filterset_class = QCPolicyFilterSet
    search_fields = ["name", "description"]
