"""Enums of the alerts app, with named state groups."""

from django.db import models
from django.utils.translation import gettext_lazy as _


class RuleKind(models.TextChoices):
    FAILURE_RATE = "failure_rate", _("Failure rate")
    THROUGHPUT_DROP = "throughput_drop", _("Throughput drop vs previous period")
    LATENCY_P95 = "latency_p95", _("Model call latency p95")
    TOKEN_BUDGET = "token_budget", _("Token usage against budget")
    RUN_FAILED = "run_failed", _("Run failed after final retry")
    RUN_STUCK = "run_stuck", _("Run stuck")
    BREAKER_OPEN = "breaker_open", _("Model service breaker open")
    STALE_DATA = "stale_data", _("No data / stale rollups")

    @classmethod
    def per_run(cls):
        return (cls.RUN_FAILED, cls.RUN_STUCK)


class Severity(models.TextChoices):
    WARNING = "warning", _("Warning")
    CRITICAL = "critical", _("Critical")

    @classmethod
    def rank(cls, value: str | None) -> int:
        """0 for no severity (ok), 1 warning, 2 critical: for comparisons and ordering."""
        return {cls.WARNING: 1, cls.CRITICAL: 2}.get(value, 0)


class AlertStatus(models.TextChoices):
    FIRING = "firing", _("Firing")
    ACKNOWLEDGED = "acknowledged", _("Acknowledged")
    RESOLVED = "resolved", _("Resolved")

    @classmethod
    def open(cls):
        return (cls.FIRING, cls.ACKNOWLEDGED)


class AlertEventKind(models.TextChoices):
    FIRED = "fired", _("Fired")
    ESCALATED = "escalated", _("Escalated")
    DEESCALATED = "deescalated", _("De-escalated")
    RESOLVED = "resolved", _("Resolved")
    ACKNOWLEDGED = "acknowledged", _("Acknowledged")

    @classmethod
    def notified(cls):
        """Transitions that go to notification channels (an acknowledgement is an operator's own act)."""
        return (cls.FIRED, cls.ESCALATED, cls.DEESCALATED, cls.RESOLVED)


class GroupBy(models.TextChoices):
    NONE = "", _("Whole scope (one alert)")
    PROJECT = "project", _("Per project")
    PIPELINE = "pipeline", _("Per pipeline")
    STAGE_TEMPLATE = "stage_template", _("Per stage template")
    MODEL_VERSION = "model_version", _("Per model version")


class ChannelKind(models.TextChoices):
    WEBHOOK = "webhook", _("Webhook")
    EMAIL = "email", _("Email")


class NotificationStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    SENDING = "sending", _("Sending")
    SENT = "sent", _("Sent")
    FAILED = "failed", _("Failed")

    @classmethod
    def claimable(cls):
        return (cls.PENDING, cls.SENDING)


class BudgetPeriod(models.TextChoices):
    DAY = "day", _("Day")
    WEEK = "week", _("Week")
    MONTH = "month", _("Month")
