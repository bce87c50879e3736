"""Serializers of the alerts API: shapes and validation only; writes go through services."""

from django.utils.translation import gettext_lazy as _
from rest_framework import serializers

from catalog.models import Project
from dataflare_portal.core.api.base import PortalModelSerializer
from pipelines.models import Pipeline
from tasks.choices import RunEventKind

from ..models import Alert, AlertEvent, AlertRule, Notification, NotificationChannel, RunWebhook


class AlertRuleSerializer(PortalModelSerializer):
    class Meta:
        model = AlertRule
        fields = [
            "id",
            "name",
            "kind",
            "enabled",
            "description",
            "project",
            "pipeline",
            "stage_template",
            "model_version",
            "group_by",
            "warning_threshold",
            "critical_threshold",
            "window_minutes",
            "min_samples",
            "budget_tokens",
            "budget_period",
            "pause_runs_on_breach",
            "channels",
            "muted_until",
            "last_evaluated_at",
            "last_error",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["last_evaluated_at", "last_error", "created_at", "updated_at"]


class AlertRuleBriefSerializer(serializers.ModelSerializer):
    class Meta:
        model = AlertRule
        fields = ["id", "name", "kind", "enabled"]


class SignedTargetSerializer(PortalModelSerializer):
    """Fields of anything that signs what it posts: a write-only secret, and whether one is set."""

    secret = serializers.CharField(
        write_only=True,
        required=False,
        allow_blank=True,
        max_length=500,
        help_text=_("Webhook signing secret (write-only)."),
    )
    has_secret = serializers.SerializerMethodField()

    def get_has_secret(self, obj) -> bool:
        return bool(obj.secret_ciphertext)


class NotificationChannelSerializer(SignedTargetSerializer):
    class Meta:
        model = NotificationChannel
        fields = ["id", "name", "kind", "target", "secret", "has_secret", "min_severity", "enabled", "disabled_reason"]
        read_only_fields = ["disabled_reason"]


class RunWebhookSerializer(SignedTargetSerializer):
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=RunEventKind.choices),
        required=False,
        help_text=_("The run events to send; empty sends every event."),
    )

    class Meta:
        model = RunWebhook
        fields = ["id", "project", "name", "target", "secret", "has_secret", "events", "enabled", "disabled_reason"]
        read_only_fields = ["disabled_reason"]


class AlertEventSerializer(serializers.ModelSerializer):
    actor = serializers.StringRelatedField()

    class Meta:
        model = AlertEvent
        fields = ["kind", "severity", "value", "at", "actor", "note"]


class AlertSerializer(serializers.ModelSerializer):
    rule_name = serializers.CharField(source="rule.name", read_only=True)
    kind = serializers.CharField(source="rule.kind", read_only=True)
    acknowledged_by = serializers.StringRelatedField()
    resolved_by = serializers.StringRelatedField()

    class Meta:
        model = Alert
        fields = [
            "id",
            "rule",
            "rule_name",
            "kind",
            "scope_key",
            "severity",
            "status",
            "title",
            "value",
            "evidence",
            "project",
            "pipeline",
            "run_id",
            "stage_template",
            "model_version",
            "fired_at",
            "last_evaluated_at",
            "acknowledged_at",
            "acknowledged_by",
            "ack_note",
            "resolved_at",
            "resolved_by",
            "resolve_note",
        ]
        read_only_fields = fields


class AlertDetailSerializer(AlertSerializer):
    events = AlertEventSerializer(many=True, read_only=True)

    class Meta(AlertSerializer.Meta):
        fields = AlertSerializer.Meta.fields + ["events"]
        read_only_fields = fields


class AlertBriefSerializer(serializers.ModelSerializer):
    class Meta:
        model = Alert
        fields = ["id", "title", "severity", "status", "fired_at"]


class NoteSerializer(serializers.Serializer):
    note = serializers.CharField(required=False, allow_blank=True, max_length=2000, default="")


class PauseLiftSerializer(serializers.Serializer):
    project = serializers.PrimaryKeyRelatedField(queryset=Project.objects.all(), required=False)
    pipeline = serializers.PrimaryKeyRelatedField(queryset=Pipeline.objects.all(), required=False)
    note = serializers.CharField(required=False, allow_blank=True, max_length=2000, default="")

    def validate(self, attrs):
        if bool(attrs.get("project")) == bool(attrs.get("pipeline")):
            raise serializers.ValidationError({"project": [_("Give exactly one of project or pipeline.")]})
        return attrs


class PausedScopeSerializer(serializers.Serializer):
    type = serializers.CharField()
    id = serializers.IntegerField()
    name = serializers.CharField()
    paused_reason = serializers.CharField()


class NotificationSerializer(serializers.ModelSerializer):
    class Meta:
        model = Notification
        fields = [
            "id",
            "alert",
            "channel",
            "run_event",
            "webhook",
            "event",
            "status",
            "attempts",
            "next_attempt_at",
            "last_error",
            "created_at",
            "sent_at",
        ]
        read_only_fields = fields
