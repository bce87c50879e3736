"""Uploaded WebAssembly stage modules: one immutable row per (name, version), bytes kept in the database."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.utils.translation import gettext_lazy as _

NAME_RE = r"^[a-z0-9][a-z0-9_.-]{0,99}$"


class WasmModuleQuerySet(models.QuerySet):
    def latest_of(self, name: str) -> WasmModule | None:
        """The highest version of `name`, or None."""
        return self.filter(name=name).order_by("-version").first()


class WasmModule(models.Model):
    """One uploaded version of a stage module; never changed once stored (only its description may be)."""

    name = models.CharField(
        _("name"),
        max_length=100,
        validators=[
            RegexValidator(NAME_RE, _("Lowercase letters, digits, '.', '_' and '-'; start with a letter or digit."))
        ],
    )
    version = models.PositiveIntegerField(_("version"))
    sha256 = models.CharField(_("sha256"), max_length=64, db_index=True, editable=False)
    size = models.PositiveIntegerField(_("size (bytes)"), editable=False)
    content = models.BinaryField(_("module bytes"), editable=False)
    exports = models.JSONField(_("exports"), default=list, blank=True, editable=False)
    imports = models.JSONField(_("imports"), default=list, blank=True, editable=False)
    description = models.TextField(_("description"), blank=True)
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name=_("uploaded by"),
    )
    created_at = models.DateTimeField(_("uploaded at"), auto_now_add=True)

    objects = WasmModuleQuerySet.as_manager()

    IMMUTABLE = ("name", "version", "sha256", "size", "content", "exports", "imports")

    class Meta:
        verbose_name = _("WebAssembly module version")
        verbose_name_plural = _("WebAssembly module versions")
        ordering = ["name", "-version"]
        constraints = [
            models.UniqueConstraint(
                fields=["name", "version"],
                name="%(app_label)s_%(class)s_unique_version",
                violation_error_message=_("This module already has this version."),
            ),
            models.CheckConstraint(
                condition=models.Q(version__gte=1),
                name="%(app_label)s_%(class)s_version_positive",
                violation_error_message=_("Versions count from 1."),
            ),
        ]

    def __str__(self) -> str:
        return self.label

    def save(self, *args, **kwargs):
        if not self._state.adding and self.pk:
            stored = type(self).objects.filter(pk=self.pk).values(*self.IMMUTABLE).first()
            if stored is not None:
                for name in self.IMMUTABLE:
                    mine = getattr(self, name)
                    theirs = stored[name]
                    if name == "content":
                        mine, theirs = bytes(mine), bytes(theirs)
                    if mine != theirs:
                        raise ValueError(f"{self.label}: a stored module version is immutable ({name})")
        super().save(*args, **kwargs)

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"
