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


class Duty(models.Model):
    """A periodic duty (reaper pass, rollups, alert evaluation…) or the scheduler: its heartbeat and its lease.

    Whoever runs a duty (beat's task on a worker, or a worker's own watcher while beat is silent) first
    takes the row's lease with a conditional UPDATE, so only one process runs it at a time on SQLite
    and PostgreSQL alike; the row `scheduler` is beat's own heartbeat.
    """

    name = models.CharField(_("name"), max_length=100, primary_key=True)
    last_started_at = models.DateTimeField(_("last started"), null=True, blank=True)
    last_finished_at = models.DateTimeField(_("last finished"), null=True, blank=True)
    last_ok = models.BooleanField(_("last run ok"), default=True)
    last_error = models.TextField(_("last error"), blank=True)
    last_by = models.CharField(_("last run by"), max_length=200, blank=True)
    lease_owner = models.CharField(_("lease owner"), max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(_("lease expires"), null=True, blank=True)

    class Meta:
        db_table = "duties"
        ordering = ["name"]
        verbose_name = _("periodic duty")
        verbose_name_plural = _("periodic duties")

    def __str__(self) -> str:
        return self.name


class OidcIdentity(models.Model):
    """A user known to an OpenID Connect provider: (issuer, subject) -> the portal user (AUTH_MODE=oidc).

    Users are matched by the provider's stable subject identifier, never by name or email, so an
    account at the provider can never take over a local account of the same name. `role` is the portal
    role the provider's claims gave at the last sign-in (re-evaluated every time).
    """

    issuer = models.CharField(_("issuer"), max_length=255)
    subject = models.CharField(_("subject"), max_length=255)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="oidc_identities",
        verbose_name=_("user"),
    )
    role = models.CharField(_("role at last sign-in"), max_length=20, blank=True)
    first_seen = models.DateTimeField(_("first seen"), auto_now_add=True)
    last_seen = models.DateTimeField(_("last seen"), null=True, blank=True)

    class Meta:
        db_table = "oidc_identities"
        ordering = ["issuer", "subject"]
        verbose_name = _("OpenID Connect identity")
        verbose_name_plural = _("OpenID Connect identities")
        constraints = [
            models.UniqueConstraint(
                fields=["issuer", "subject"],
                name="core_oidcidentity_unique_subject",
                violation_error_message=_("This subject of this issuer is already linked to a user."),
            )
        ]

    def __str__(self) -> str:
        return f"{self.subject} @ {self.issuer}"
