"""Cross-cutting models: runtime configuration overrides and the audit log."""

import uuid

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _


class SystemConfig(models.Model):
    """A database override of one operational setting (the PRD's `config` table)."""

    key = models.CharField(_("key"), max_length=100, unique=True)
    value = models.JSONField(_("value"))
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("updated by"),
    )

    class Meta:
        db_table = "config"
        ordering = ["key"]
        verbose_name = _("system setting")
        verbose_name_plural = _("system settings")

    def __str__(self) -> str:
        return self.key


class AuditAction(models.TextChoices):
    CREATE = "create", _("Create")
    UPDATE = "update", _("Update")
    DELETE = "delete", _("Delete")
    RUN = "run", _("Run")
    CANCEL = "cancel", _("Cancel")
    RETRY = "retry", _("Retry")
    RESUME = "resume", _("Resume")
    PUBLISH = "publish", _("Publish")
    ARCHIVE = "archive", _("Archive")
    OVERRIDE = "override", _("Override")
    ACKNOWLEDGE = "acknowledge", _("Acknowledge")
    RESOLVE = "resolve", _("Resolve")
    REVIEW = "review", _("Review")
    IMPORT = "import", _("Import")
    EXPORT = "export", _("Export")
    CONFIG = "config", _("Config change")
    PAUSE = "pause", _("Pause")
    UNPAUSE = "unpause", _("Lift pause")
    ROTATE = "rotate", _("Rotate keys")
    LOGIN = "login", _("Log in")


class AuditLogEntry(models.Model):
    """One write or operator action: who, when, what, before and after, and the request id."""

    id = models.BigAutoField(primary_key=True)
    timestamp = models.DateTimeField(_("time"), auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("actor"),
    )
    actor_name = models.CharField(_("actor name"), max_length=150, blank=True)
    action = models.CharField(_("action"), max_length=20, choices=AuditAction.choices, db_index=True)
    object_type = models.CharField(_("object type"), max_length=100, db_index=True)
    object_id = models.CharField(_("object id"), max_length=64, blank=True, db_index=True)
    object_repr = models.CharField(_("object"), max_length=200, blank=True)
    before = models.JSONField(_("before"), null=True, blank=True)
    after = models.JSONField(_("after"), null=True, blank=True)
    message = models.TextField(_("message"), blank=True)
    request_id = models.CharField(_("request id"), max_length=64, blank=True, db_index=True)
    request_uid = models.UUIDField(default=uuid.uuid4, editable=False)

    class Meta:
        db_table = "audit_log"
        ordering = ["-timestamp", "-id"]
        verbose_name = _("audit log entry")
        verbose_name_plural = _("audit log")
        indexes = [models.Index(fields=["object_type", "object_id", "-timestamp"], name="audit_object_idx")]

    def __str__(self) -> str:
        return f"{self.actor_name} {self.action} {self.object_type}:{self.object_id}"
