"""Serializers of the engine API: runs, stage runs, batches, quarantined records, workers, start input."""

from django.utils.translation import gettext_lazy as _
from rest_framework import serializers

from catalog.models import Dataset
from pipelines.models import Pipeline

from ..models import Batch, QuarantinedRecord, StageRun, Task, TaskRun, WorkerHeartbeat


class StageRunSerializer(serializers.ModelSerializer):
    class Meta:
        model = StageRun
        fields = [
            "id",
            "run",
            "position",
            "key",
            "kind",
            "queue",
            "status",
            "status_reason",
            "total_batches",
            "batches_done",
            "records_in",
            "records_out",
            "records_filtered",
            "records_failed",
            "last_error",
            "result",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields


class TaskRunSerializer(serializers.ModelSerializer):
    url = serializers.HyperlinkedIdentityField(view_name="tasks-api:taskrun-detail")
    page_url = serializers.SerializerMethodField()

    class Meta:
        model = TaskRun
        fields = [
            "id",
            "url",
            "page_url",
            "task",
            "number",
            "project",
            "pipeline",
            "template",
            "status",
            "status_reason",
            "status_code",
            "status_params",
            "idempotency_key",
            "records_in",
            "records_out",
            "records_filtered",
            "records_failed",
            "prompt_tokens",
            "completion_tokens",
            "retry_tokens",
            "output_version",
            "parameters",
            "input_version",
            "trigger",
            "created_at",
            "started_at",
            "finished_at",
            "created_by",
        ]
        read_only_fields = fields

    def get_page_url(self, obj) -> str:
        from django.urls import reverse

        return reverse("tasks:run-detail", args=[obj.pk])


class TaskRunDetailSerializer(TaskRunSerializer):
    stage_runs = StageRunSerializer(many=True, read_only=True)

    class Meta(TaskRunSerializer.Meta):
        fields = [*TaskRunSerializer.Meta.fields, "pipeline_snapshot", "stage_runs"]
        read_only_fields = fields


class TaskRunBriefSerializer(serializers.ModelSerializer):
    class Meta:
        model = TaskRun
        fields = ["id", "number", "status", "pipeline", "created_at"]
        read_only_fields = fields


class RunStartSerializer(serializers.Serializer):
    """Input of POST /runs/: which pipeline, optionally which input dataset, task and parameters."""

    pipeline = serializers.PrimaryKeyRelatedField(queryset=Pipeline.objects.select_related("project"))
    input_dataset = serializers.PrimaryKeyRelatedField(queryset=Dataset.objects.all(), required=False, allow_null=True)
    task = serializers.PrimaryKeyRelatedField(queryset=Task.objects.all(), required=False, allow_null=True)
    parameters = serializers.DictField(required=False, default=dict)

    def validate(self, attrs):
        task = attrs.get("task")
        if task is not None and task.pipeline_id != attrs["pipeline"].pk:
            raise serializers.ValidationError({"task": [_("This task runs another pipeline.")]})
        return attrs


class RunRetrySerializer(serializers.Serializer):
    stage_run = serializers.UUIDField(required=False, allow_null=True)


class RunReprocessSerializer(serializers.Serializer):
    stage = serializers.CharField(
        max_length=50,
        required=False,
        allow_blank=True,
        help_text=_("The stage whose quarantined records to reprocess; needed only when there are several."),
    )


class RunRerunSerializer(serializers.Serializer):
    stage = serializers.CharField(
        max_length=50, help_text=_("Key of the stage to start from; the stages before it are reused, not redone.")
    )


class BatchSerializer(serializers.ModelSerializer):
    class Meta:
        model = Batch
        fields = [
            "id",
            "stage_run",
            "index",
            "status",
            "attempt",
            "failures",
            "crashes",
            "lease_owner",
            "lease_expires_at",
            "input_ref",
            "output_ref",
            "canonical_attempt",
            "checkpoint",
            "not_before",
            "records_in",
            "records_out",
            "records_filtered",
            "records_failed",
            "duration_ms",
            "error",
            "queued_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields


class QuarantinedRecordSerializer(serializers.ModelSerializer):
    class Meta:
        model = QuarantinedRecord
        fields = ["id", "stage_run", "batch", "attempt", "record_index", "code", "reason", "record", "created_at"]
        read_only_fields = fields


class WorkerHeartbeatSerializer(serializers.ModelSerializer):
    class Meta:
        model = WorkerHeartbeat
        fields = ["id", "name", "hostname", "pid", "queues", "started_at", "last_seen_at", "batches_done"]
        read_only_fields = fields


class BackfillSerializer(serializers.Serializer):
    pipeline = serializers.PrimaryKeyRelatedField(queryset=Pipeline.objects.all())
    versions = serializers.ListField(
        child=serializers.IntegerField(min_value=1),
        allow_empty=False,
        max_length=1000,
        help_text=_("Version numbers of the pipeline's input dataset."),
    )
    first_record = serializers.IntegerField(
        required=False,
        allow_null=True,
        help_text=_("First record of each version to read, counted from 1 (default: the first)."),
    )
    last_record = serializers.IntegerField(
        required=False,
        allow_null=True,
        help_text=_("Last record of each version to read, counted from 1 and included (default: the last)."),
    )
    template = serializers.IntegerField(
        required=False,
        allow_null=True,
        help_text=_("Id of a version of the pipeline's template to run (default: the pipeline's current one)."),
    )
    parameters = serializers.DictField(required=False)
    confirm = serializers.BooleanField(
        required=False, default=False, help_text=_("True to start after reading the preview.")
    )
