"""Admin of the alerts app: rules and channels (editable), alerts and the outbox (read-only, with actions)."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from catalog.models import Project
from dataflare_portal.core.admin_base import BigTableAdmin, PortalModelAdmin, badge_column
from dataflare_portal.core.netguard import EndpointRefused, check_url
from pipelines.models import Pipeline
from tasks.choices import RunEventKind

from . import services
from .choices import ChannelKind
from .models import Alert, AlertEvent, AlertRule, Notification, NotificationChannel, RunWebhook


@admin.register(AlertRule)
class AlertRuleAdmin(PortalModelAdmin):
    """Rules with their scope, thresholds and channels; the shipped defaults are here to edit."""

    list_display = (
        "name",
        "kind",
        "enabled",
        "project",
        "pipeline",
        "group_by",
        "warning_with_unit",
        "critical_with_unit",
        "window_minutes",
        "last_evaluated_at",
        "last_error",
    )
    list_filter = ("kind", "enabled", "project")
    list_select_related = ("project", "pipeline")
    list_editable = ("enabled",)
    search_fields = ("name", "description")
    raw_id_fields = ("pipeline",)
    filter_horizontal = ("channels",)
    readonly_fields = ("last_evaluated_at", "last_error")
    fieldsets = (
        (None, {"fields": ("name", "kind", "enabled", "description")}),
        (_("Scope"), {"fields": ("project", "pipeline", "stage_template", "model_version", "group_by")}),
        (
            _("Condition"),
            {"fields": ("warning_threshold", "critical_threshold", "window_minutes", "min_samples")},
        ),
        (_("Token budget"), {"fields": ("budget_tokens", "budget_period", "pause_runs_on_breach")}),
        (_("Notifications"), {"fields": ("channels", "muted_until")}),
        (_("Last evaluation"), {"fields": ("last_evaluated_at", "last_error")}),
    )

    @admin.display(description=_("warning threshold"), ordering="warning_threshold")
    def warning_with_unit(self, obj):
        return obj.warning_display

    @admin.display(description=_("critical threshold"), ordering="critical_threshold")
    def critical_with_unit(self, obj):
        return obj.critical_display


class SignedWebhookForm(forms.ModelForm):
    """A form for anything that posts signed bodies to a URL: the URL passes the SSRF guard and a secret is set."""

    secret = forms.CharField(
        label=_("shared secret"),
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text=_("Signs webhook bodies (HMAC-SHA256). Stored encrypted, never shown; leave empty to keep it."),
    )

    def check_webhook(self, data: dict) -> None:
        if data.get("target"):
            try:
                check_url(data["target"], field="target")
            except EndpointRefused as exc:
                self.add_error("target", str(exc))
        if not data.get("secret") and not (self.instance and self.instance.secret_ciphertext):
            self.add_error("secret", _("A webhook needs a shared secret to sign its requests."))


class NotificationChannelForm(SignedWebhookForm):
    class Meta:
        model = NotificationChannel
        fields = ("name", "kind", "target", "secret", "min_severity", "enabled", "disabled_reason")

    def clean(self):
        data = super().clean()
        if data.get("kind") == ChannelKind.WEBHOOK and data.get("target"):
            self.check_webhook(data)
        return data


@admin.register(NotificationChannel)
class NotificationChannelAdmin(PortalModelAdmin):
    form = NotificationChannelForm
    list_display = ("name", "kind", "target", "min_severity", "enabled", "disabled_reason")
    list_filter = ("kind", "enabled")
    search_fields = ("name", "target")

    def save_model(self, request, obj, form, change):
        services.channel_save(actor=request.user, channel=obj, secret=form.cleaned_data.get("secret") or None)


class RunWebhookForm(SignedWebhookForm):
    events = forms.MultipleChoiceField(
        label=_("events"),
        choices=RunEventKind.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text=_("The run events to send; none ticked sends every event."),
    )

    class Meta:
        model = RunWebhook
        fields = ("project", "name", "target", "secret", "events", "enabled", "disabled_reason")

    def clean(self):
        data = super().clean()
        self.check_webhook(data)
        return data


@admin.register(RunWebhook)
class RunWebhookAdmin(PortalModelAdmin):
    """A project's subscriptions to run events (signed, retried through the notification outbox)."""

    form = RunWebhookForm
    list_display = ("name", "project", "target", "events_column", "enabled", "disabled_reason")
    list_filter = ("enabled", "project")
    list_select_related = ("project",)
    search_fields = ("name", "target")

    @admin.display(description=_("events"))
    def events_column(self, obj):
        return ", ".join(str(RunEventKind(e).label) for e in obj.events) if obj.events else gettext("every event")

    def save_model(self, request, obj, form, change):
        services.webhook_save(actor=request.user, webhook=obj, secret=form.cleaned_data.get("secret") or None)


class AlertEventInline(admin.TabularInline):
    model = AlertEvent
    fields = ("at", "kind", "severity", "value", "actor", "note")
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ("at", "pk")

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Alert)
class AlertAdmin(BigTableAdmin):
    """Alerts (one open per rule and scope); operators acknowledge, resolve and lift budget pauses here too."""

    list_display = (
        "title_column",
        badge_column("severity", _("severity")),
        badge_column("status", _("status")),
        "rule",
        "project",
        "fired_at",
        "resolved_at",
        "evidence_link",
    )
    list_filter = ("status", "severity", "rule__kind", "project")
    list_select_related = ("rule", "project")
    search_fields = ("title", "scope_key")
    date_hierarchy = None
    readonly_fields = [f.name for f in Alert._meta.fields]
    inlines = [AlertEventInline]
    actions = ["acknowledge_alerts", "resolve_alerts", "lift_budget_pause"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description=_("title"), ordering="title")
    def title_column(self, obj):
        return obj.title_display

    @admin.display(description=_("evidence"))
    def evidence_link(self, obj):
        return format_html('<a href="{}">{}</a>', reverse("alerts:detail", args=[obj.pk]), gettext("evidence"))

    def _each(self, request, queryset, fn, done_message):
        done = 0
        for alert in queryset:
            try:
                fn(alert)
                done += 1
            except ValidationError as exc:
                self.message_user(request, f"{alert}: {'; '.join(exc.messages)}", messages.WARNING)
        if done:
            self.message_user(request, done_message % {"n": done}, messages.SUCCESS)

    @admin.action(description=_("Acknowledge selected alerts"))
    def acknowledge_alerts(self, request, queryset):
        self._each(
            request,
            queryset,
            lambda a: services.alert_acknowledge(
                alert=a, actor=request.user, note=gettext("Acknowledged in the admin.")
            ),
            gettext("%(n)d alert(s) acknowledged."),
        )

    @admin.action(description=_("Resolve selected alerts"))
    def resolve_alerts(self, request, queryset):
        self._each(
            request,
            queryset,
            lambda a: services.alert_resolve(alert=a, actor=request.user, note=gettext("Resolved in the admin.")),
            gettext("%(n)d alert(s) resolved."),
        )

    @admin.action(description=_("Lift the budget pause of the selected alerts' scopes"))
    def lift_budget_pause(self, request, queryset):
        def lift(alert):
            paused = (alert.evidence or {}).get("paused")
            if not paused:
                raise ValidationError(gettext("This alert paused nothing."))
            model = Pipeline if paused["type"] == "pipeline" else Project
            scope = model.objects.get(pk=paused["id"])
            services.budget_pause_lift(scope=scope, actor=request.user, note=gettext("Lifted in the admin."))

        self._each(request, queryset, lift, gettext("%(n)d pause(s) lifted."))


@admin.register(Notification)
class NotificationAdmin(BigTableAdmin):
    list_display = (
        "alert",
        "channel",
        "webhook",
        "event",
        badge_column("status", _("status")),
        "attempts",
        "created_at",
        "sent_at",
    )
    list_filter = ("status", "event", "channel")
    list_select_related = ("alert", "channel", "webhook")
    readonly_fields = [f.name for f in Notification._meta.fields]
    raw_id_fields = ("alert", "alert_event", "run_event")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
