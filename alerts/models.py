"""Alerts: rules, alerts (one open per rule and scope), their transitions, channels and the outbox."""

import math

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from catalog.models import Project, TimestampedModel
from pipelines.models import Pipeline
from tasks.choices import RunEventKind
from tasks.models import RunEvent

from .choices import (
    AlertEventKind,
    AlertStatus,
    BudgetPeriod,
    ChannelKind,
    GroupBy,
    NotificationStatus,
    RuleKind,
    Severity,
)


def default_window_minutes() -> int:
    """The evaluation window a new rule starts with: the `alert_default_window_minutes` system setting."""
    from dataflare_portal.core.config import config_get

    return int(config_get("alert_default_window_minutes"))


def default_failure_rate_thresholds() -> tuple[float, float]:
    """(warning, critical) fractions a failure-rate rule without thresholds takes, from the system settings."""
    from dataflare_portal.core.config import config_get

    return (
        float(config_get("alert_error_rate_warning_pct")) / 100,
        float(config_get("alert_error_rate_critical_pct")) / 100,
    )


# The unit a rule kind's value and thresholds are in (alerts/titles.format_value shows them).
THRESHOLD_UNITS = {
    RuleKind.FAILURE_RATE: "fraction",
    RuleKind.THROUGHPUT_DROP: "fraction",
    RuleKind.LATENCY_P95: "ms",
    RuleKind.TOKEN_BUDGET: "fraction",
    RuleKind.RUN_FAILED: "count",
    RuleKind.RUN_STUCK: "minutes",
    RuleKind.BREAKER_OPEN: "minutes",
    RuleKind.STALE_DATA: "minutes",
}
THRESHOLD_HELP = _(
    "Units by kind: failure rate, throughput drop and token budget are fractions (0.2 = 20%); "
    "latency is in milliseconds; run stuck, breaker open and stale data are in minutes; "
    "run failed counts runs (1)."
)

# Kinds whose thresholds are fractions (0..1) rather than milliseconds, minutes or counts.
FRACTION_KINDS = (RuleKind.FAILURE_RATE, RuleKind.THROUGHPUT_DROP)


class NotificationChannel(TimestampedModel):
    """Where alert transitions are sent: a signed JSON webhook or an email address."""

    name = models.CharField(_("name"), max_length=100, unique=True)
    kind = models.CharField(_("kind"), max_length=10, choices=ChannelKind.choices)
    target = models.CharField(_("URL or address"), max_length=500)
    secret_ciphertext = models.TextField(_("encrypted signing secret"), blank=True, editable=False)
    enabled = models.BooleanField(_("enabled"), default=True)
    disabled_reason = models.TextField(_("disabled because"), blank=True)
    min_severity = models.CharField(
        _("minimum severity"), max_length=10, choices=Severity.choices, default=Severity.WARNING
    )

    class Meta:
        ordering = ["name"]
        verbose_name = _("notification channel")
        verbose_name_plural = _("notification channels")

    def __str__(self) -> str:
        return self.name

    def clean(self):
        super().clean()
        if self.kind == ChannelKind.WEBHOOK and not self.target.lower().startswith(("http://", "https://")):
            raise ValidationError({"target": _("A webhook target must be an http:// or https:// URL.")})
        if self.kind == ChannelKind.EMAIL:
            from django.core.validators import validate_email

            try:
                validate_email(self.target)
            except ValidationError:
                raise ValidationError({"target": _("Enter a valid email address.")}) from None

    def accepts(self, severity: str) -> bool:
        """Whether a transition of this severity is at or above the channel's minimum."""
        return Severity.rank(severity) >= Severity.rank(self.min_severity)


def validate_run_event_kinds(value) -> None:
    """A webhook's event filter: a list of run event names (empty: every event)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValidationError(_("Give a list of event names."), code="invalid")
    unknown = sorted(set(value) - set(RunEventKind.values))
    if unknown:
        raise ValidationError(
            _("Unknown event(s): %(names)s. Choose from %(known)s.")
            % {"names": ", ".join(unknown), "known": ", ".join(RunEventKind.values)},
            code="invalid",
        )


class RunWebhook(TimestampedModel):
    """A project's subscription to run events: a signed JSON POST per event, through the alerts outbox."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="webhooks", verbose_name=_("project"))
    name = models.CharField(_("name"), max_length=100)
    target = models.CharField(_("URL"), max_length=500)
    secret_ciphertext = models.TextField(_("encrypted signing secret"), blank=True, editable=False)
    events = models.JSONField(
        _("events"),
        default=list,
        blank=True,
        validators=[validate_run_event_kinds],
        help_text=_("The run events to send; empty sends every event."),
    )
    enabled = models.BooleanField(_("enabled"), default=True)
    disabled_reason = models.TextField(_("disabled because"), blank=True)

    # The outbox's senders (alerts/notify.py) treat a run webhook like a webhook channel.
    kind = ChannelKind.WEBHOOK

    class Meta:
        ordering = ["project", "name"]
        verbose_name = _("run webhook")
        verbose_name_plural = _("run webhooks")
        constraints = [
            models.UniqueConstraint(
                fields=["project", "name"],
                name="%(app_label)s_%(class)s_unique_name",
                violation_error_message=_("This project already has a webhook with this name."),
            )
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self):
        super().clean()
        if self.target and not self.target.lower().startswith(("http://", "https://")):
            raise ValidationError({"target": _("A webhook target must be an http:// or https:// URL.")})

    def wants(self, kind: str) -> bool:
        """Whether this subscription takes events of this kind."""
        return not self.events or kind in self.events


class AlertRule(TimestampedModel):
    """A condition over metrics or runs with a warning and a critical threshold over a window."""

    name = models.CharField(_("name"), max_length=100, unique=True)
    kind = models.CharField(_("kind"), max_length=20, choices=RuleKind.choices)
    enabled = models.BooleanField(_("enabled"), default=True)
    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, null=True, blank=True, related_name="alert_rules", verbose_name=_("project")
    )
    pipeline = models.ForeignKey(
        Pipeline,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="alert_rules",
        verbose_name=_("pipeline"),
    )
    stage_template = models.CharField(_("stage template"), max_length=50, blank=True)
    model_version = models.CharField(_("model version"), max_length=160, blank=True)
    group_by = models.CharField(
        _("one alert"),
        max_length=20,
        choices=GroupBy.choices,
        default=GroupBy.NONE,
        blank=True,
        help_text=_("Split the scope: e.g. one alert per pipeline. Run rules always make one alert per run."),
    )
    warning_threshold = models.FloatField(_("warning threshold"), null=True, blank=True, help_text=THRESHOLD_HELP)
    critical_threshold = models.FloatField(_("critical threshold"), null=True, blank=True, help_text=THRESHOLD_HELP)
    window_minutes = models.PositiveIntegerField(
        _("window (minutes)"), default=default_window_minutes, validators=[MinValueValidator(1)]
    )
    min_samples = models.PositiveIntegerField(
        _("minimum volume"),
        default=0,
        help_text=_("Records, batches or model calls a window needs before a rate is judged (noise control)."),
    )
    # Token budgets: the budget over a period, and whether a critical breach pauses new runs.
    budget_tokens = models.BigIntegerField(_("token budget"), null=True, blank=True)
    budget_period = models.CharField(_("budget period"), max_length=5, choices=BudgetPeriod.choices, blank=True)
    pause_runs_on_breach = models.BooleanField(_("pause new runs on breach"), default=False)
    channels = models.ManyToManyField(NotificationChannel, blank=True, related_name="rules", verbose_name=_("channels"))
    muted_until = models.DateTimeField(
        _("notifications muted until"),
        null=True,
        blank=True,
        help_text=_("Alerts still open and resolve; no notification is sent before this time."),
    )
    last_evaluated_at = models.DateTimeField(_("last evaluated"), null=True, blank=True, editable=False)
    last_error = models.TextField(_("last evaluation problem"), blank=True, editable=False)
    description = models.TextField(_("description"), blank=True)

    class Meta:
        ordering = ["name"]
        verbose_name = _("alert rule")
        verbose_name_plural = _("alert rules")
        constraints = [
            models.CheckConstraint(
                condition=Q(warning_threshold__isnull=False) | Q(critical_threshold__isnull=False),
                name="%(app_label)s_%(class)s_has_threshold",
                violation_error_message=_("Set a warning threshold, a critical threshold or both."),
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def warning_display(self) -> str:
        """The warning threshold with its unit (5.0%, 2000 ms, 30 min)."""
        return self._with_unit(self.warning_threshold)

    @property
    def critical_display(self) -> str:
        return self._with_unit(self.critical_threshold)

    def _with_unit(self, value) -> str:
        from .titles import format_value

        return "—" if value is None else format_value(value, THRESHOLD_UNITS.get(self.kind, ""))

    def clean(self):
        super().clean()
        errors: dict[str, list] = {}

        def add(field: str, message) -> None:
            errors.setdefault(field, []).append(message)

        if self.kind == RuleKind.FAILURE_RATE and self.warning_threshold is None and self.critical_threshold is None:
            # A failure-rate rule saved without thresholds takes the system defaults (percent settings).
            self.warning_threshold, self.critical_threshold = default_failure_rate_thresholds()
        warn, crit = self.warning_threshold, self.critical_threshold
        if warn is None and crit is None:
            add("warning_threshold", _("Set a warning threshold, a critical threshold or both."))
        if warn is not None and crit is not None and warn > crit:
            add("critical_threshold", _("The critical threshold must be at or above the warning threshold."))
        for name, value in (("warning_threshold", warn), ("critical_threshold", crit)):
            if value is None:
                continue
            if not math.isfinite(value):
                add(name, _("A threshold must be a finite number."))
            elif value < 0:
                add(name, _("A threshold cannot be negative."))
            elif self.kind in FRACTION_KINDS and not 0 < value <= 1:
                add(name, _("This rule's thresholds are fractions between 0 and 1 (0.2 = 20%)."))
            elif self.kind == RuleKind.TOKEN_BUDGET and value <= 0:
                add(name, _("Budget thresholds are fractions of the budget (0.8 = 80%)."))
        if self.kind == RuleKind.TOKEN_BUDGET:
            if not self.budget_tokens or self.budget_tokens <= 0:
                add("budget_tokens", _("A token budget rule needs a positive budget."))
            if not self.budget_period:
                add("budget_period", _("A token budget rule needs a period."))
            if not (self.project_id or self.pipeline_id or self.group_by in (GroupBy.PROJECT, GroupBy.PIPELINE)):
                add(
                    "project",
                    _("A token budget applies to a project or a pipeline: set one, or split per project or pipeline."),
                )
        elif self.pause_runs_on_breach:
            add("pause_runs_on_breach", _("Only token budget rules can pause runs."))
        if self.kind in RuleKind.per_run() and self.group_by:
            add("group_by", _("Run rules always make one alert per run."))
        if self.kind == RuleKind.BREAKER_OPEN and self.group_by:
            add("group_by", _("Breaker rules always make one alert per model service."))
        owner = Pipeline.objects.filter(pk=self.pipeline_id).values_list("project_id", flat=True).first()
        if self.pipeline_id and self.project_id and owner is not None and owner != self.project_id:
            add("pipeline", _("This pipeline belongs to another project."))
        if errors:
            raise ValidationError(errors)

    @property
    def muted(self) -> bool:
        return self.muted_until is not None and self.muted_until > timezone.now()

    def severity_for(self, value: float | None) -> str | None:
        """The severity a value deserves under this rule's thresholds, or None when it is fine."""
        if value is None:
            return None
        if self.critical_threshold is not None and value >= self.critical_threshold:
            return Severity.CRITICAL
        if self.warning_threshold is not None and value >= self.warning_threshold:
            return Severity.WARNING
        return None


class Alert(models.Model):
    """One alert per rule and scope; it fires on a transition and resolves when the condition clears."""

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="alerts", verbose_name=_("rule"))
    scope_key = models.CharField(_("scope"), max_length=200, default="", blank=True)
    severity = models.CharField(_("severity"), max_length=10, choices=Severity.choices, db_index=True)
    status = models.CharField(
        _("status"), max_length=12, choices=AlertStatus.choices, default=AlertStatus.FIRING, db_index=True
    )
    title = models.CharField(_("title"), max_length=300)
    # The title as a code and parameters (alerts/titles.py), rendered in the reader's language.
    title_code = models.CharField(_("title code"), max_length=40, blank=True)
    title_params = models.JSONField(_("title parameters"), default=dict, blank=True)
    value = models.FloatField(_("value"), null=True, blank=True)
    evidence = models.JSONField(_("evidence"), default=dict, blank=True)
    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, null=True, blank=True, related_name="alerts", verbose_name=_("project")
    )
    pipeline = models.ForeignKey(
        Pipeline, on_delete=models.SET_NULL, null=True, blank=True, related_name="alerts", verbose_name=_("pipeline")
    )
    run_id = models.UUIDField(_("run"), null=True, blank=True)
    stage_template = models.CharField(_("stage template"), max_length=50, blank=True)
    model_version = models.CharField(_("model version"), max_length=160, blank=True)
    fired_at = models.DateTimeField(_("fired at"), db_index=True)
    last_evaluated_at = models.DateTimeField(_("last evaluated"))
    acknowledged_at = models.DateTimeField(_("acknowledged at"), null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("acknowledged by"),
    )
    ack_note = models.TextField(_("acknowledgement note"), blank=True)
    resolved_at = models.DateTimeField(_("resolved at"), null=True, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("resolved by"),
    )
    resolve_note = models.TextField(_("resolution note"), blank=True)

    class Meta:
        db_table = "alerts"
        ordering = ["-fired_at"]
        verbose_name = _("alert")
        verbose_name_plural = _("alerts")
        constraints = [
            # Deduplication: at most one open alert per rule and scope.
            models.UniqueConstraint(
                fields=["rule", "scope_key"],
                condition=Q(status__in=["firing", "acknowledged"]),
                name="%(app_label)s_%(class)s_one_open_per_scope",
                violation_error_message=_("This rule already has an open alert for this scope."),
            )
        ]
        indexes = [
            # The banner's query: open alerts by severity, newest first.
            models.Index(fields=["status", "severity", "-fired_at"], name="alert_status_sev_fired_idx"),
        ]

    def __str__(self) -> str:
        return self.title_display

    @property
    def title_display(self) -> str:
        """The title in the reader's language (the stored English sentence for alerts without a code)."""
        from .titles import title_display

        return title_display(self.title_code, self.title_params, self.title)

    @property
    def is_open(self) -> bool:
        return self.status in AlertStatus.open()


class AlertEvent(models.Model):
    """One transition of an alert (fired, escalated, de-escalated, acknowledged, resolved): its timeline."""

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="events", verbose_name=_("alert"))
    kind = models.CharField(_("event"), max_length=12, choices=AlertEventKind.choices)
    severity = models.CharField(_("severity"), max_length=10, choices=Severity.choices)
    value = models.FloatField(_("value"), null=True, blank=True)
    at = models.DateTimeField(_("at"), default=timezone.now)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    note = models.TextField(_("note"), blank=True)

    class Meta:
        ordering = ["alert", "at", "pk"]
        verbose_name = _("alert event")
        verbose_name_plural = _("alert events")

    def __str__(self) -> str:
        return f"{self.alert_id} {self.kind} {self.severity}"


class Notification(models.Model):
    """Outbox row: one alert transition to deliver to one channel, claimed once by the sender."""

    alert = models.ForeignKey(
        Alert, on_delete=models.CASCADE, null=True, blank=True, related_name="notifications", verbose_name=_("alert")
    )
    alert_event = models.ForeignKey(
        AlertEvent,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="notifications",
        verbose_name=_("transition"),
    )
    channel = models.ForeignKey(
        NotificationChannel,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="notifications",
        verbose_name=_("channel"),
    )
    # A run event for a project's webhook rides the same outbox (claim, signature, retries).
    run_event = models.ForeignKey(
        RunEvent, on_delete=models.CASCADE, null=True, blank=True, related_name="+", verbose_name=_("run event")
    )
    webhook = models.ForeignKey(
        RunWebhook,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="notifications",
        verbose_name=_("webhook"),
    )
    event = models.CharField(_("event"), max_length=40)
    payload = models.JSONField(_("payload"))
    status = models.CharField(
        _("status"),
        max_length=10,
        choices=NotificationStatus.choices,
        default=NotificationStatus.PENDING,
        db_index=True,
    )
    attempts = models.PositiveSmallIntegerField(_("attempts"), default=0)
    next_attempt_at = models.DateTimeField(_("next attempt"), db_index=True)
    claimed_by = models.CharField(_("claimed by"), max_length=200, blank=True)
    claimed_until = models.DateTimeField(_("claimed until"), null=True, blank=True)
    last_error = models.TextField(_("last error"), blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    sent_at = models.DateTimeField(_("sent at"), null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("notification")
        verbose_name_plural = _("notifications")
        constraints = [
            # A transition goes to a channel once, however often the evaluation is repeated.
            models.UniqueConstraint(
                fields=["alert_event", "channel"],
                name="%(app_label)s_%(class)s_once_per_channel",
                violation_error_message=_("This transition was already queued for this channel."),
            ),
            models.UniqueConstraint(
                fields=["run_event", "webhook"],
                name="%(app_label)s_%(class)s_run_event_once_per_webhook",
                violation_error_message=_("This run event was already queued for this webhook."),
            ),
            models.CheckConstraint(
                condition=(Q(alert__isnull=False, channel__isnull=False, webhook__isnull=True))
                | Q(alert__isnull=True, channel__isnull=True, run_event__isnull=False, webhook__isnull=False),
                name="%(app_label)s_%(class)s_alert_or_run_event",
                violation_error_message=_("A notification is an alert for a channel or a run event for a webhook."),
            ),
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="notif_status_next_idx")]

    def __str__(self) -> str:
        return f"{self.event} → {self.channel or self.webhook}"

    @property
    def destination(self):
        """The channel or run webhook this row goes to."""
        return self.channel if self.channel_id else self.webhook
