"""Catalog: projects, data sources (connectors), datasets, dataset versions and lineage."""

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from .choices import ConnectionStatus, DatasetVersionStatus
from .connectors import ConnectorError, validate_config, validate_location
from .connectors.registry import format_choices, kind_choices
from .locations import TemplateSyntaxError, has_version_placeholder, location_template


class TimestampedModel(models.Model):
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        abstract = True


class Project(TimestampedModel):
    """A line of work that owns data sources, datasets and pipelines."""

    name = models.CharField(_("name"), max_length=100, unique=True)
    slug = models.SlugField(_("slug"), max_length=100, unique=True)
    description = models.TextField(_("description"), blank=True)
    # A token-budget breach (alerts app) may pause new runs of this project until lifted.
    runs_paused = models.BooleanField(_("new runs paused"), default=False)
    paused_reason = models.CharField(_("pause reason"), max_length=300, blank=True)

    class Meta:
        ordering = ["name"]
        verbose_name = _("project")
        verbose_name_plural = _("projects")

    def __str__(self) -> str:
        return self.name


class DataSource(TimestampedModel):
    """A connector instance: where records are read from or written to."""

    project = models.ForeignKey(
        Project, on_delete=models.PROTECT, related_name="data_sources", verbose_name=_("project")
    )
    name = models.CharField(_("name"), max_length=100)
    # Any registered connector kind: the built-ins and `dataflare.connectors` plug-ins (a callable, so
    # installing a plug-in needs no migration).
    kind = models.CharField(_("kind"), max_length=20, choices=kind_choices)
    description = models.TextField(_("description"), blank=True)
    # Non-secret connection settings, validated against the connector kind's schema.
    config = models.JSONField(_("configuration"), default=dict, blank=True)
    # Credentials, encrypted at rest (never shown back, never logged, never audited).
    secret_ciphertext = models.TextField(_("encrypted credentials"), blank=True, editable=False)
    status = models.CharField(
        _("status"), max_length=10, choices=ConnectionStatus.choices, default=ConnectionStatus.UNKNOWN
    )
    last_checked_at = models.DateTimeField(_("last checked"), null=True, blank=True)
    last_error = models.TextField(_("last error"), blank=True)

    class Meta:
        db_table = "data_sources"
        ordering = ["project__name", "name"]
        verbose_name = _("data source")
        verbose_name_plural = _("data sources")
        constraints = [
            models.UniqueConstraint(
                fields=["project", "name"],
                name="%(app_label)s_%(class)s_unique_name",
                violation_error_message=_("A data source with this name already exists in the project."),
            )
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self):
        """Validate the config against the connector kind's schema (errors name the setting)."""
        super().clean()
        if not self.kind:
            return
        try:
            self.config = validate_config(self.kind, self.config if self.config is not None else {})
        except ConnectorError as exc:
            field = "kind" if exc.field == "kind" else "config"
            message = exc.message
            if field == "config" and exc.field not in (None, "config"):
                # The JSON path of the setting leads the message, so the form shows it at that setting.
                message = message.removeprefix(f"{exc.field}: ")
                message = "$." + exc.field + ": " + message
            raise ValidationError({field: [message]}) from None


class Dataset(TimestampedModel):
    """A named collection of records at a location in a data source."""

    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="datasets", verbose_name=_("project"))
    source = models.ForeignKey(
        DataSource,
        on_delete=models.PROTECT,
        related_name="datasets",
        null=True,
        blank=True,
        verbose_name=_("data source"),
    )
    name = models.CharField(_("name"), max_length=100)
    description = models.TextField(_("description"), blank=True)
    format = models.CharField(_("format"), max_length=10, choices=format_choices)
    # Path below the source's root, table name, or SQL query (for format=query).
    location = models.TextField(_("location"))
    options = models.JSONField(_("options"), default=dict, blank=True)
    schema = models.JSONField(_("schema"), default=list, blank=True, help_text=_("Inferred fields and types."))
    row_count = models.BigIntegerField(_("rows"), null=True, blank=True)
    profiled_at = models.DateTimeField(_("profiled at"), null=True, blank=True)

    class Meta:
        db_table = "datasets"
        ordering = ["project__name", "name"]
        verbose_name = _("dataset")
        verbose_name_plural = _("datasets")
        constraints = [
            models.UniqueConstraint(
                fields=["project", "name"],
                name="%(app_label)s_%(class)s_unique_name",
                violation_error_message=_("A dataset with this name already exists in the project."),
            )
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self):
        """A dataset belongs to its source's project, uses a format of its kind and a path below its root."""
        super().clean()
        if self.location and has_version_placeholder(self.location):
            try:
                location_template(self.location)
            except TemplateSyntaxError as exc:
                raise ValidationError({"location": [exc.message]}) from None
        if self.source_id is None or not self.format or not self.location:
            return
        if self.project_id and self.source.project_id != self.project_id:
            raise ValidationError({"source": [_("The data source belongs to another project.")]})
        try:
            validate_location(self.source.kind, self.source.config, self.format, self.location)
        except ConnectorError as exc:
            raise ValidationError({exc.field if exc.field in ("format", "location") else "source": [exc.message]})


class DatasetVersion(models.Model):
    """An immutable published version of a dataset, with checksum and lineage."""

    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="versions", verbose_name=_("dataset"))
    version = models.PositiveIntegerField(_("version"))
    status = models.CharField(
        _("status"), max_length=10, choices=DatasetVersionStatus.choices, default=DatasetVersionStatus.BUILDING
    )
    location = models.TextField(_("location"), blank=True)
    archive_location = models.TextField(_("archive location"), blank=True)
    checksum = models.CharField(_("checksum (sha256)"), max_length=64, blank=True)
    record_count = models.BigIntegerField(_("records"), default=0)
    size_bytes = models.BigIntegerField(_("size (bytes)"), default=0)
    # Lineage: the inputs it was derived from, and what produced it. Ids, not foreign keys,
    # because the catalog depends on no other app (run, template version, model versions).
    parents = models.ManyToManyField(
        "self", symmetrical=False, related_name="children", blank=True, verbose_name=_("derived from")
    )
    run_id = models.UUIDField(_("produced by run"), null=True, blank=True, db_index=True)
    template_version_id = models.BigIntegerField(_("template version"), null=True, blank=True)
    model_versions = models.JSONField(_("model versions"), default=list, blank=True)
    qc_decision = models.JSONField(_("QC decision"), default=dict, blank=True)
    lineage = models.JSONField(_("lineage details"), default=dict, blank=True)
    # While BUILDING: the publish attempt that may flip it (a batch attempt, or a manual publish). Every
    # file the attempt creates is named after this row, which is committed first, so cleanup finds it.
    writer = models.CharField(_("writer"), max_length=200, blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    published_at = models.DateTimeField(_("published at"), null=True, blank=True)
    archived_at = models.DateTimeField(_("archived at"), null=True, blank=True)

    class Meta:
        ordering = ["dataset", "-version"]
        verbose_name = _("dataset version")
        verbose_name_plural = _("dataset versions")
        constraints = [
            models.UniqueConstraint(
                fields=["dataset", "version"],
                name="%(app_label)s_%(class)s_unique_version",
                violation_error_message=_("This dataset already has a version with this number."),
            ),
            models.UniqueConstraint(
                fields=["run_id"],
                condition=Q(run_id__isnull=False, status__in=["building", "published", "archived"]),
                name="%(app_label)s_%(class)s_one_per_run",
                violation_error_message=_("This run already has a version (published or being built)."),
            ),
            models.CheckConstraint(
                condition=~Q(status="published") | ~Q(checksum=""),
                name="%(app_label)s_%(class)s_published_has_checksum",
                violation_error_message=_("A published version must have a checksum."),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.dataset} v{self.version}"
