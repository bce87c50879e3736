"""QC and publish API: lots (decide, override, publish), review items (decide), dataset versions (archive)."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied, ValidationError
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response

from catalog.api.serializers import DatasetVersionSerializer
from catalog.models import DatasetVersion
from dataflare_portal.core.api.base import PortalReadOnlyViewSet
from dataflare_portal.core.api.exceptions import error_body
from pipelines.api.parsers import BoundedJSONParser

from ..choices import ReviewDecision
from ..models import QCLot, ReviewItem
from ..publish import PublishBlocked, PublishError, dataset_version_archive, publish_run
from ..qc import QCError, qc_lot_decide, qc_lot_override, review_item_decide


class ReviewItemSerializer(serializers.ModelSerializer):
    reviewer = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)

    class Meta:
        model = ReviewItem
        fields = ["id", "lot", "sequence", "record_key", "record", "decision", "reason", "reviewer", "decided_at"]
        read_only_fields = fields


class QCLotSerializer(serializers.ModelSerializer):
    override_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)
    run = serializers.UUIDField(source="stage_run.run_id", read_only=True)

    class Meta:
        model = QCLot
        fields = [
            "id",
            "stage_run",
            "run",
            "policy",
            "lot_size",
            "sample_size",
            "acceptance_number",
            "auto_defects",
            "review_defects",
            "decision",
            "evidence",
            "decided_at",
            "override_reason",
            "override_by",
            "created_at",
        ]
        read_only_fields = fields


class ReviewDecisionInput(serializers.Serializer):
    decision = serializers.ChoiceField(choices=[ReviewDecision.ACCEPTED, ReviewDecision.REJECTED])
    reason = serializers.CharField(required=False, allow_blank=True, max_length=2000, default="")


class OverrideInput(serializers.Serializer):
    reason = serializers.CharField(max_length=2000)


class PublishInput(serializers.Serializer):
    override_reason = serializers.CharField(required=False, allow_blank=True, max_length=2000, default="")


def _refused(exc: Exception) -> Response:
    """QC/publish refusals in the API's one error shape (409: the state does not allow it)."""
    if isinstance(exc, PermissionDenied):
        return Response(error_body(403, "permission_denied", str(exc)), status=403)
    if isinstance(exc, ValidationError):
        fields = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        return Response(error_body(400, "invalid", "; ".join(exc.messages), fields), status=400)
    code = "qc_not_accepted" if isinstance(exc, PublishBlocked) else "conflict"
    if isinstance(exc, PublishError):
        return Response(error_body(400, "publish_failed", str(exc)), status=400)
    return Response(error_body(409, code, str(exc)), status=409)


class QCLotViewSet(PortalReadOnlyViewSet):
    parser_classes = [BoundedJSONParser, FormParser, MultiPartParser]
    queryset = QCLot.objects.select_related("stage_run", "policy", "override_by").order_by("-created_at")
    serializer_class = QCLotSerializer
    filterset_fields = ["decision", "policy", "stage_run__run"]
    operator_actions = ("decide", "publish")

    @extend_schema(request=None, responses=QCLotSerializer)
    @action(detail=True, methods=["post"])
    def decide(self, request, pk=None):
        """Apply the acceptance rule (every sampled record must be reviewed)."""
        try:
            lot = qc_lot_decide(lot=self.get_object(), actor=request.user)
        except QCError as exc:
            return _refused(exc)
        return Response(QCLotSerializer(lot).data)

    @extend_schema(request=OverrideInput, responses=QCLotSerializer)
    @action(detail=True, methods=["post"])
    def override(self, request, pk=None):
        """Accept the lot against the rule (admin role, with a reason; audited)."""
        data = OverrideInput(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            lot = qc_lot_override(lot=self.get_object(), actor=request.user, reason=data.validated_data["reason"])
        except (PermissionDenied, ValidationError) as exc:
            return _refused(exc)
        return Response(QCLotSerializer(lot).data)

    @extend_schema(request=PublishInput, responses={201: DatasetVersionSerializer})
    @action(detail=True, methods=["post"])
    def publish(self, request, pk=None):
        """Publish the lot's run; with override_reason an admin publishes a rejected lot (audited)."""
        data = PublishInput(data=request.data)
        data.is_valid(raise_exception=True)
        lot = self.get_object()
        try:
            version = publish_run(
                run=lot.stage_run.run,
                actor=request.user,
                override_reason=data.validated_data["override_reason"] or None,
            )
        except (PublishBlocked, PublishError, PermissionDenied, ValidationError) as exc:
            return _refused(exc)
        return Response(DatasetVersionSerializer(version).data, status=status.HTTP_201_CREATED)


class ReviewItemViewSet(PortalReadOnlyViewSet):
    parser_classes = [BoundedJSONParser, FormParser, MultiPartParser]
    queryset = ReviewItem.objects.select_related("reviewer").order_by("lot", "sequence")
    serializer_class = ReviewItemSerializer
    filterset_fields = ["lot", "decision"]
    operator_actions = ("decide",)

    @extend_schema(request=ReviewDecisionInput, responses=ReviewItemSerializer)
    @action(detail=True, methods=["post"])
    def decide(self, request, pk=None):
        """Accept or reject one sampled record (a reason is required to reject)."""
        data = ReviewDecisionInput(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            item = review_item_decide(item=self.get_object(), actor=request.user, **data.validated_data)
        except (QCError, ValidationError) as exc:
            return _refused(exc)
        return Response(ReviewItemSerializer(item).data)


class DatasetVersionArchiveViewSet(mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Archive a published dataset version (files move to the archive folder; lineage stays readable)."""

    queryset = DatasetVersion.objects.select_related("dataset")
    serializer_class = DatasetVersionSerializer
    operator_actions = ("archive",)

    @extend_schema(request=None, responses=DatasetVersionSerializer)
    @action(detail=True, methods=["post"])
    def archive(self, request, pk=None):
        try:
            version = dataset_version_archive(version=self.get_object(), actor=request.user)
        except ValidationError as exc:
            return _refused(exc)
        return Response(DatasetVersionSerializer(version).data)
