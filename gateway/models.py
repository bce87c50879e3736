"""Gateway: per-project API keys for the portal's OpenAI-compatible endpoints, and the per-key request log."""

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from catalog.models import Project
from pipelines.models import ModelConfig

from .choices import BudgetPeriod, GatewayEndpoint

# A key is "dfk_" + 8 characters of prefix (shown, indexed) + "_" + 43 characters of secret (256 bits).
KEY_SCHEME = "dfk_"


class GatewayKey(models.Model):
    """An API key of one project: only its prefix and the SHA-256 of the whole key are kept."""

    id = models.BigAutoField(primary_key=True)
    project = models.ForeignKey(
        Project, on_delete=models.PROTECT, related_name="gateway_keys", verbose_name=_("project")
    )
    name = models.CharField(_("name"), max_length=100)
    prefix = models.CharField(_("key prefix"), max_length=16, unique=True, editable=False)
    # SHA-256 of the whole key (hex). The key itself is shown once, at creation, and never stored.
    key_hash = models.CharField(max_length=64, editable=False)
    allowed_models = models.ManyToManyField(
        ModelConfig,
        blank=True,
        related_name="+",
        verbose_name=_("allowed models"),
        help_text=_("Model configs this key may call; none selected means every model config."),
    )
    store_prompts = models.BooleanField(
        _("store prompts"),
        default=False,
        help_text=_("Keep the request body of each call in the request log (off: metadata only)."),
    )
    token_budget = models.BigIntegerField(
        _("token budget"), null=True, blank=True, help_text=_("Prompt + completion tokens per period; empty: no limit.")
    )
    budget_period = models.CharField(
        _("budget period"), max_length=5, choices=BudgetPeriod.choices, default=BudgetPeriod.MONTH
    )
    expires_at = models.DateTimeField(_("expires at"), null=True, blank=True)
    revoked_at = models.DateTimeField(_("revoked at"), null=True, blank=True, editable=False)
    last_used_at = models.DateTimeField(_("last used"), null=True, blank=True, editable=False)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        editable=False,
        related_name="+",
        verbose_name=_("created by"),
    )

    class Meta:
        ordering = ["project__name", "name"]
        verbose_name = _("gateway key")
        verbose_name_plural = _("gateway keys")
        constraints = [
            models.UniqueConstraint(
                fields=["project", "name"],
                name="%(app_label)s_%(class)s_unique_name",
                violation_error_message=_("A gateway key with this name already exists in the project."),
            ),
            models.CheckConstraint(
                condition=models.Q(token_budget__isnull=True) | models.Q(token_budget__gt=0),
                name="%(app_label)s_%(class)s_budget_positive",
                violation_error_message=_("A token budget must be positive (or empty for no limit)."),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def is_expired(self, now=None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())

    def state(self, now=None) -> str:
        if self.is_revoked:
            return "revoked"
        if self.is_expired(now):
            return "expired"
        return "active"


class GatewayRequest(models.Model):
    """One call through the gateway: who (key), what (endpoint, model), outcome, tokens; the body only if opted in."""

    id = models.BigAutoField(primary_key=True)
    ts = models.DateTimeField(_("time"), db_index=True)
    key = models.ForeignKey(GatewayKey, on_delete=models.CASCADE, related_name="requests", verbose_name=_("key"))
    project_id = models.BigIntegerField(_("project"))
    endpoint = models.CharField(_("endpoint"), max_length=12, choices=GatewayEndpoint.choices)
    model = models.CharField(_("model"), max_length=100, blank=True)
    stream = models.BooleanField(_("streamed"), default=False)
    http_status = models.PositiveSmallIntegerField(_("HTTP status"))
    status_code = models.CharField(_("status"), max_length=32, default="OK")
    error = models.CharField(_("error"), max_length=500, blank=True)
    prompt_tokens = models.BigIntegerField(_("prompt tokens"), default=0)
    completion_tokens = models.BigIntegerField(_("completion tokens"), default=0)
    latency_ms = models.FloatField(_("latency (ms)"), default=0)
    request_id = models.CharField(_("request id"), max_length=64, blank=True)
    # Only when the key or its project opted in (store_prompts): the request body as sent.
    prompt = models.JSONField(_("request body"), null=True, blank=True)

    class Meta:
        ordering = ["-ts", "-id"]
        verbose_name = _("gateway request")
        verbose_name_plural = _("gateway requests")
        indexes = [models.Index(fields=["key", "-ts"], name="gateway_req_key_ts_idx")]

    def __str__(self) -> str:
        return f"{self.ts:%Y-%m-%d %H:%M:%S} {self.endpoint} {self.model} {self.http_status}"
