"""Schedules API: CRUD (operators create and edit, admins delete), pause/resume/preview; triggers; fires (read)."""

from drf_spectacular.utils import extend_schema
from rest_framework.decorators import action
from rest_framework.response import Response

from dataflare_portal.core.api.base import PortalModelViewSet, PortalReadOnlyViewSet

from .. import services
from ..filtersets import DatasetTriggerFilterSet, ScheduleFilterSet, ScheduleFireFilterSet, TriggerFireFilterSet
from ..models import DatasetTrigger, Schedule, ScheduleFire, TriggerFire
from .serializers import (
    DatasetTriggerSerializer,
    ScheduleFireSerializer,
    SchedulePreviewSerializer,
    ScheduleSerializer,
    TriggerFireSerializer,
)

OPERATOR_WRITES = ["create", "update", "partial_update"]


class ScheduleViewSet(PortalModelViewSet):
    """Schedules of pipelines. Writes go through schedule_save (validated, audited, clock restarted)."""

    queryset = Schedule.objects.select_related("created_by").order_by("pipeline_id", "name")
    serializer_class = ScheduleSerializer
    filterset_class = ScheduleFilterSet
    search_fields = ["name"]
    ordering_fields = ["name", "next_fire_at", "created_at"]
    operator_actions = [*OPERATOR_WRITES, "pause", "resume"]

    def _save(self, serializer):
        instance = serializer.instance or Schedule()
        for name, value in serializer.validated_data.items():
            setattr(instance, name, value)
        serializer.instance = services.schedule_save(schedule=instance, actor=self.request.user)

    @extend_schema(request=None, responses=ScheduleSerializer)
    @action(detail=True, methods=["post"])
    def pause(self, request, pk=None):
        schedule = services.schedule_pause(schedule=self.get_object(), actor=request.user)
        return Response(ScheduleSerializer(schedule, context=self.get_serializer_context()).data)

    @extend_schema(request=None, responses=ScheduleSerializer)
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        schedule = services.schedule_resume(schedule=self.get_object(), actor=request.user)
        return Response(ScheduleSerializer(schedule, context=self.get_serializer_context()).data)

    @extend_schema(responses=SchedulePreviewSerializer)
    @action(detail=True, methods=["get"])
    def preview(self, request, pk=None):
        schedule = self.get_object()
        times = services.schedule_preview(schedule=schedule)
        return Response(SchedulePreviewSerializer({"fire_times": times, "timezone": schedule.timezone}).data)


class ScheduleFireViewSet(PortalReadOnlyViewSet):
    """What became of each slot: started (with its run), queued, skipped (with the reason) or failed."""

    queryset = ScheduleFire.objects.order_by("-slot", "-id")
    serializer_class = ScheduleFireSerializer
    filterset_class = ScheduleFireFilterSet
    ordering_fields = ["slot", "created_at"]


class DatasetTriggerViewSet(PortalModelViewSet):
    """Dataset triggers: each newly published version of the dataset starts the pipeline once."""

    queryset = DatasetTrigger.objects.select_related("created_by").order_by("pipeline_id", "dataset_id")
    serializer_class = DatasetTriggerSerializer
    filterset_class = DatasetTriggerFilterSet
    ordering_fields = ["created_at"]
    operator_actions = OPERATOR_WRITES

    def _save(self, serializer):
        instance = serializer.instance or DatasetTrigger()
        for name, value in serializer.validated_data.items():
            setattr(instance, name, value)
        serializer.instance = services.trigger_save(trigger=instance, actor=self.request.user)


class TriggerFireViewSet(PortalReadOnlyViewSet):
    queryset = TriggerFire.objects.order_by("-created_at", "-id")
    serializer_class = TriggerFireSerializer
    filterset_class = TriggerFireFilterSet
    ordering_fields = ["created_at"]
