"""Alerts API: rules and channels (admin CRUD), alerts with acknowledge/resolve, budget pauses, the outbox."""

from drf_spectacular.utils import extend_schema
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from catalog.models import Project
from dataflare_portal.core.api.base import PortalModelViewSet, PortalReadOnlyViewSet, StrictQueryParamsMixin
from pipelines.models import Pipeline

from .. import services
from ..filtersets import (
    AlertFilterSet,
    AlertRuleFilterSet,
    NotificationChannelFilterSet,
    NotificationFilterSet,
    RunWebhookFilterSet,
)
from ..models import Alert, AlertRule, Notification, NotificationChannel, RunWebhook
from . import serializers as s


class AlertRuleViewSet(PortalModelViewSet):
    queryset = AlertRule.objects.select_related("project", "pipeline").prefetch_related("channels")
    serializer_class = s.AlertRuleSerializer
    brief_serializer_class = s.AlertRuleBriefSerializer
    filterset_class = AlertRuleFilterSet
    search_fields = ["name", "description"]
    ordering_fields = ["name", "kind", "last_evaluated_at"]


def _with_secret(serializer, model):
    """The instance with the validated fields set, and the new signing secret (None keeps the stored one)."""
    data = dict(serializer.validated_data)
    secret = data.pop("secret", None)
    instance = serializer.instance or model()
    for name, value in data.items():
        setattr(instance, name, value)
    return instance, secret or None


class NotificationChannelViewSet(PortalModelViewSet):
    queryset = NotificationChannel.objects.all()
    serializer_class = s.NotificationChannelSerializer
    filterset_class = NotificationChannelFilterSet
    ordering_fields = ["name", "kind"]

    def _save(self, serializer):
        channel, secret = _with_secret(serializer, NotificationChannel)
        serializer.instance = services.channel_save(actor=self.request.user, channel=channel, secret=secret)


class RunWebhookViewSet(PortalModelViewSet):
    """A project's run webhooks: run events (started, finished, waiting for review, published) as signed POSTs."""

    queryset = RunWebhook.objects.select_related("project")
    serializer_class = s.RunWebhookSerializer
    filterset_class = RunWebhookFilterSet
    ordering_fields = ["name", "project"]

    def _save(self, serializer):
        webhook, secret = _with_secret(serializer, RunWebhook)
        serializer.instance = services.webhook_save(actor=self.request.user, webhook=webhook, secret=secret)


class AlertViewSet(PortalReadOnlyViewSet):
    queryset = Alert.objects.select_related("rule", "acknowledged_by", "resolved_by")
    serializer_class = s.AlertSerializer
    brief_serializer_class = s.AlertBriefSerializer
    filterset_class = AlertFilterSet
    search_fields = ["title", "scope_key"]
    ordering_fields = ["fired_at", "severity", "status"]
    operator_actions = ("acknowledge", "resolve")

    def get_serializer_class(self):
        if self.action == "retrieve":
            return s.AlertDetailSerializer
        return super().get_serializer_class()

    def get_queryset(self):
        qs = super().get_queryset()
        return qs.prefetch_related("events__actor") if self.action == "retrieve" else qs

    @extend_schema(request=s.NoteSerializer, responses=s.AlertSerializer, summary="Acknowledge with a note")
    @action(detail=True, methods=["post"])
    def acknowledge(self, request, pk=None):
        note = s.NoteSerializer(data=request.data)
        note.is_valid(raise_exception=True)
        alert = services.alert_acknowledge(
            alert=self.get_object(), actor=request.user, note=note.validated_data["note"]
        )
        return Response(s.AlertSerializer(alert).data)

    @extend_schema(request=s.NoteSerializer, responses=s.AlertSerializer, summary="Resolve by hand")
    @action(detail=True, methods=["post"])
    def resolve(self, request, pk=None):
        note = s.NoteSerializer(data=request.data)
        note.is_valid(raise_exception=True)
        alert = services.alert_resolve(alert=self.get_object(), actor=request.user, note=note.validated_data["note"])
        return Response(s.AlertSerializer(alert).data)


class BudgetPauseViewSet(StrictQueryParamsMixin, viewsets.ViewSet):
    """Projects and pipelines whose new runs a token budget paused; operators lift a pause."""

    operator_actions = ("lift",)

    @extend_schema(responses=s.PausedScopeSerializer(many=True), summary="Paused scopes")
    def list(self, request):
        rows = [
            {"type": "project", "id": p.pk, "name": p.name, "paused_reason": p.paused_reason}
            for p in Project.objects.filter(runs_paused=True).order_by("name")[:500]
        ] + [
            {"type": "pipeline", "id": p.pk, "name": p.name, "paused_reason": p.paused_reason}
            for p in Pipeline.objects.filter(runs_paused=True).order_by("name")[:500]
        ]
        return Response(s.PausedScopeSerializer(rows, many=True).data)

    @extend_schema(request=s.PauseLiftSerializer, responses=s.PausedScopeSerializer, summary="Lift a budget pause")
    @action(detail=False, methods=["post"])
    def lift(self, request):
        body = s.PauseLiftSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        scope = body.validated_data.get("pipeline") or body.validated_data.get("project")
        target = services.budget_pause_lift(scope=scope, actor=request.user, note=body.validated_data["note"])
        return Response({"type": target._meta.model_name, "id": target.pk, "name": target.name, "paused_reason": ""})


class NotificationViewSet(PortalReadOnlyViewSet):
    queryset = Notification.objects.all()
    serializer_class = s.NotificationSerializer
    filterset_class = NotificationFilterSet
    ordering_fields = ["created_at", "status"]
