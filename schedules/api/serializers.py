"""Serializers of the schedules API."""

from rest_framework import serializers

from dataflare_portal.core.api.base import PortalModelSerializer

from ..models import DatasetTrigger, Schedule, ScheduleFire, TriggerFire


class ScheduleSerializer(PortalModelSerializer):
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)

    class Meta:
        model = Schedule
        fields = [
            "id",
            "pipeline",
            "name",
            "enabled",
            "kind",
            "cron",
            "timezone",
            "interval_seconds",
            "anchor_at",
            "overlap",
            "catchup",
            "catchup_limit",
            "parameters",
            "next_fire_at",
            "last_slot",
            "last_outcome",
            "last_fired_at",
            "created_at",
            "updated_at",
            "created_by",
        ]
        read_only_fields = [
            "next_fire_at",
            "last_slot",
            "last_outcome",
            "last_fired_at",
            "created_at",
            "updated_at",
            "created_by",
        ]


class ScheduleFireSerializer(serializers.ModelSerializer):
    reason = serializers.CharField(read_only=True)

    class Meta:
        model = ScheduleFire
        fields = ["id", "schedule", "slot", "outcome", "reason_code", "reason_params", "reason", "run", "created_at"]
        read_only_fields = fields


class SchedulePreviewSerializer(serializers.Serializer):
    fire_times = serializers.ListField(child=serializers.DateTimeField())
    timezone = serializers.CharField()


class DatasetTriggerSerializer(PortalModelSerializer):
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)

    class Meta:
        model = DatasetTrigger
        fields = ["id", "pipeline", "dataset", "enabled", "parameters", "created_at", "created_by"]
        read_only_fields = ["created_at", "created_by"]


class TriggerFireSerializer(serializers.ModelSerializer):
    reason = serializers.CharField(read_only=True)

    class Meta:
        model = TriggerFire
        fields = ["id", "trigger", "dataset_version", "outcome", "reason_code", "reason_params", "reason", "run"]
        read_only_fields = fields
