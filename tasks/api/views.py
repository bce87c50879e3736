"""Engine API: start (Idempotency-Key), cancel, retry, resume, progress; reads of runs, stages, batches, workers."""

from django.shortcuts import get_object_or_404
from django.utils.translation import gettext as _
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from dataflare_portal.core.api.base import PortalReadOnlyViewSet

from .. import backfills, reruns, selectors, services
from ..filtersets import (
    BatchFilterSet,
    QuarantinedRecordFilterSet,
    StageRunFilterSet,
    TaskRunFilterSet,
    WorkerHeartbeatFilterSet,
)
from ..models import Batch, QuarantinedRecord, StageRun, TaskRun, WorkerHeartbeat
from .serializers import (
    BackfillSerializer,
    BatchSerializer,
    QuarantinedRecordSerializer,
    RunReprocessSerializer,
    RunRerunSerializer,
    RunRetrySerializer,
    RunStartSerializer,
    StageRunSerializer,
    TaskRunBriefSerializer,
    TaskRunDetailSerializer,
    TaskRunSerializer,
    WorkerHeartbeatSerializer,
)

IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key", str, OpenApiParameter.HEADER, description="Same key and body: the same run, never a second one."
)


class TaskRunViewSet(PortalReadOnlyViewSet):
    """Runs. POST starts one (honouring Idempotency-Key); cancel, retry and resume are operator actions."""

    queryset = TaskRun.objects.select_related("task").order_by("-created_at")
    serializer_class = TaskRunSerializer
    brief_serializer_class = TaskRunBriefSerializer
    filterset_class = TaskRunFilterSet
    ordering_fields = ["created_at", "finished_at", "status"]
    search_fields = ["task__name"]
    operator_actions = ["create", "cancel", "retry", "resume", "rerun", "reprocess_quarantined"]

    def get_serializer_class(self):
        if self.action == "retrieve":
            return TaskRunDetailSerializer
        return super().get_serializer_class()

    def get_queryset(self):
        qs = super().get_queryset()
        if self.action == "retrieve":
            qs = qs.prefetch_related("stage_runs")
        return qs

    @extend_schema(request=RunStartSerializer, responses={201: TaskRunSerializer}, parameters=[IDEMPOTENCY_HEADER])
    def create(self, request, *args, **kwargs):
        data = RunStartSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        try:
            run = services.run_start(
                pipeline=v["pipeline"],
                actor=request.user,
                input_dataset=v.get("input_dataset"),
                task=v.get("task"),
                parameters=v.get("parameters") or {},
                idempotency_key=request.headers.get("Idempotency-Key"),
            )
        except services.IdempotencyConflict as exc:
            from dataflare_portal.core.api.exceptions import error_body

            return Response(
                error_body(409, "idempotency_conflict", exc.messages[0], exc.message_dict),
                status=status.HTTP_409_CONFLICT,
            )
        replayed = getattr(run, "_replayed", False)
        body = TaskRunSerializer(run, context=self.get_serializer_context()).data
        return Response(body, status=status.HTTP_200_OK if replayed else status.HTTP_201_CREATED)

    def _act(self, fn, **kwargs):
        run = self.get_object()
        run = fn(run=run, actor=self.request.user, **kwargs)
        return Response(TaskRunSerializer(run, context=self.get_serializer_context()).data)

    @extend_schema(request=None, responses=TaskRunSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        return self._act(services.run_cancel)

    @extend_schema(request=RunRetrySerializer, responses=TaskRunSerializer)
    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        data = RunRetrySerializer(data=request.data)
        data.is_valid(raise_exception=True)
        stage_run = None
        if data.validated_data.get("stage_run"):
            stage_run = get_object_or_404(StageRun, pk=data.validated_data["stage_run"], run_id=pk)
        return self._act(services.run_retry, stage_run=stage_run)

    @extend_schema(request=None, responses=TaskRunSerializer)
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        return self._act(services.run_resume)

    @extend_schema(request=RunRerunSerializer, responses={201: TaskRunSerializer})
    @action(detail=True, methods=["post"])
    def rerun(self, request, pk=None):
        """A new run of this finished run's task from a stage, reusing the checkpointed outputs before it."""
        data = RunRerunSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        run = reruns.run_rerun_from_stage(run=self.get_object(), stage=data.validated_data["stage"], actor=request.user)
        body = TaskRunSerializer(run, context=self.get_serializer_context()).data
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(request=RunReprocessSerializer, responses={201: TaskRunSerializer})
    @action(detail=True, methods=["post"], url_path="reprocess-quarantined")
    def reprocess_quarantined(self, request, pk=None):
        """A new run of this finished run's task on the records it quarantined, from their stage on."""
        data = RunReprocessSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        run = reruns.run_reprocess_quarantined(
            run=self.get_object(), stage=data.validated_data.get("stage") or None, actor=request.user
        )
        body = TaskRunSerializer(run, context=self.get_serializer_context()).data
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(responses=dict)
    @action(detail=True, methods=["get"])
    def progress(self, request, pk=None):
        return Response(selectors.run_progress(self.get_object()))


class StageRunViewSet(PortalReadOnlyViewSet):
    queryset = StageRun.objects.order_by("run", "position")
    serializer_class = StageRunSerializer
    filterset_class = StageRunFilterSet


class BatchViewSet(PortalReadOnlyViewSet):
    queryset = Batch.objects.order_by("stage_run", "index")
    serializer_class = BatchSerializer
    filterset_class = BatchFilterSet


class QuarantinedRecordViewSet(PortalReadOnlyViewSet):
    queryset = QuarantinedRecord.objects.order_by("stage_run", "batch", "record_index")
    serializer_class = QuarantinedRecordSerializer
    filterset_class = QuarantinedRecordFilterSet
    search_fields = ["code", "reason"]


class WorkerViewSet(PortalReadOnlyViewSet):
    """Worker heartbeats; /overview/ adds liveness, leases held, orphaned batches and queue depths."""

    queryset = WorkerHeartbeat.objects.order_by("name")
    serializer_class = WorkerHeartbeatSerializer
    filterset_class = WorkerHeartbeatFilterSet

    @extend_schema(responses=dict)
    @action(detail=False, methods=["get"])
    def overview(self, request):
        return Response(selectors.workers_overview())


class BackfillViewSet(viewsets.ViewSet):
    """Backfills: a cost preview (records, estimated tokens) of a pipeline over chosen versions, then the runs."""

    operator_actions = ("create", "preview")

    def _input(self, request) -> dict:
        """The slice as backfill_preview and backfill_start take it."""
        data = BackfillSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        return {
            "pipeline": v["pipeline"],
            "versions": v["versions"],
            "first_record": v.get("first_record"),
            "last_record": v.get("last_record"),
            "template": v.get("template"),
        }

    @extend_schema(request=BackfillSerializer, responses=dict)
    @action(detail=False, methods=["post"])
    def preview(self, request):
        return Response(backfills.backfill_preview(**self._input(request)))

    @extend_schema(request=BackfillSerializer, responses={201: dict})
    def create(self, request):
        data = BackfillSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        slice_ = self._input(request)
        preview = backfills.backfill_preview(**slice_)
        if not v["confirm"]:
            raise services.RunRefused(
                {
                    "confirm": [
                        _("Read the preview (records %(r)s, estimated tokens %(t)s), then send confirm: true.")
                        % {"r": preview["records"], "t": preview["estimated_tokens"]}
                    ]
                }
            )
        runs = backfills.backfill_start(**slice_, actor=request.user, parameters=v.get("parameters"))
        body = {"preview": preview, "runs": TaskRunSerializer(runs, many=True, context={"request": request}).data}
        return Response(body, status=status.HTTP_201_CREATED)
