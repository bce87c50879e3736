"""FilterSets of the engine's tables, shared by the API and the list pages."""

import django_filters

from .models import Batch, QuarantinedRecord, StageRun, TaskRun, WorkerHeartbeat


class TaskRunFilterSet(django_filters.FilterSet):
    created_after = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = TaskRun
        fields = ["status", "project", "pipeline", "task", "template"]


class StageRunFilterSet(django_filters.FilterSet):
    class Meta:
        model = StageRun
        fields = ["run", "status", "kind", "key"]


class BatchFilterSet(django_filters.FilterSet):
    run = django_filters.UUIDFilter(field_name="stage_run__run")

    class Meta:
        model = Batch
        fields = ["stage_run", "status", "run"]


class QuarantinedRecordFilterSet(django_filters.FilterSet):
    run = django_filters.UUIDFilter(field_name="stage_run__run")

    class Meta:
        model = QuarantinedRecord
        fields = ["stage_run", "batch", "code", "run"]


class WorkerHeartbeatFilterSet(django_filters.FilterSet):
    class Meta:
        model = WorkerHeartbeat
        fields = ["name", "hostname"]
