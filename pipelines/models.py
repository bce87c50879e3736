"""Pipelines: stages, templates (immutable JSON versions), model configs, QC policies."""

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from catalog.models import Dataset, Project, TimestampedModel

from .choices import ModelProtocol, OpenAIApi, PipelineStatus


def default_model_endpoint() -> str:
    """The endpoint a new model config starts with: the `model_endpoint_default` system setting."""
    from dataflare_portal.core.config import config_get

    return str(config_get("model_endpoint_default"))


def default_deadline_ms() -> int:
    """The call deadline a new model config starts with: `model_timeout_seconds`, in milliseconds."""
    from dataflare_portal.core.config import config_get

    return max(10, round(float(config_get("model_timeout_seconds")) * 1000))


def default_batch_size() -> int:
    """Records per batch of a new pipeline: the `batch_size_default` system setting."""
    from dataflare_portal.core.config import config_get

    return int(config_get("batch_size_default"))


class ModelConfig(TimestampedModel):
    """How to call one model service (KServe V2 over gRPC, or OpenAI-compatible HTTP): endpoint, model, resilience."""

    name = models.CharField(_("name"), max_length=100, unique=True)
    protocol = models.CharField(
        _("protocol"), max_length=16, choices=ModelProtocol.choices, default=ModelProtocol.KSERVE_V2
    )
    endpoint = models.CharField(
        _("endpoint"),
        max_length=255,
        default=default_model_endpoint,
        help_text=_(
            "KServe V2: host:port of the gRPC server. OpenAI-compatible: the API's base URL, "
            "e.g. https://llm.example.com/v1."
        ),
    )
    openai_api = models.CharField(
        _("OpenAI API"),
        max_length=16,
        choices=OpenAIApi.choices,
        default=OpenAIApi.CHAT,
        help_text=_("OpenAI-compatible only: which API the records are sent to."),
    )
    # The OpenAI-compatible API key, Fernet-encrypted (core/secrets.py; rotated by rotate_secrets like every
    # *_ciphertext column). Never shown: forms and the API take it write-only and report only whether one is set.
    api_key_ciphertext = models.TextField(_("API key (encrypted)"), blank=True, editable=False)
    model_name = models.CharField(_("model name"), max_length=100)
    model_version = models.CharField(_("model version"), max_length=50, blank=True)
    tls = models.BooleanField(_("use TLS"), default=False)
    tls_ca_cert = models.TextField(_("TLS CA certificate (PEM)"), blank=True)
    parameters = models.JSONField(
        _("parameters"),
        default=dict,
        blank=True,
        help_text=_("prompt_template, temperature, max_tokens and other model parameters."),
    )
    # Values of secret-looking keys in `parameters` (api_key, token, ...), encrypted; `parameters`
    # shows them as "[redacted]" (pipelines/secret_parameters.py).
    secret_parameters_ciphertext = models.TextField(_("secret parameters (encrypted)"), blank=True, editable=False)
    deadline_ms = models.PositiveIntegerField(
        _("deadline (ms)"), default=default_deadline_ms, validators=[MinValueValidator(10)]
    )
    max_attempts = models.PositiveSmallIntegerField(
        _("max attempts"), default=4, validators=[MinValueValidator(1), MaxValueValidator(20)]
    )
    backoff_base_ms = models.PositiveIntegerField(_("retry backoff base (ms)"), default=100)
    backoff_max_ms = models.PositiveIntegerField(_("retry backoff cap (ms)"), default=5_000)
    max_in_flight = models.PositiveSmallIntegerField(
        _("max in-flight calls"), default=8, validators=[MinValueValidator(1)]
    )
    batch_size = models.PositiveIntegerField(_("records per call"), default=64, validators=[MinValueValidator(1)])
    breaker_failure_threshold = models.PositiveSmallIntegerField(
        _("breaker: failures to open"), default=5, validators=[MinValueValidator(1)]
    )
    breaker_reset_seconds = models.PositiveIntegerField(_("breaker: seconds before a trial call"), default=30)
    last_tested_at = models.DateTimeField(_("last tested"), null=True, blank=True)
    last_test_result = models.JSONField(_("last test result"), default=dict, blank=True)

    class Meta:
        ordering = ["name"]
        verbose_name = _("model config")
        verbose_name_plural = _("model configs")
        constraints = [
            models.CheckConstraint(
                condition=Q(protocol__in=ModelProtocol.values),
                name="%(app_label)s_%(class)s_protocol_known",
                violation_error_message=_("Unknown protocol."),
            ),
            models.CheckConstraint(
                condition=Q(openai_api__in=OpenAIApi.values),
                name="%(app_label)s_%(class)s_openai_api_known",
                violation_error_message=_("Unknown OpenAI API."),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.model_name}{':' + self.model_version if self.model_version else ''})"

    def clean(self):
        super().clean()
        # Imported here: the stage kinds import these models' app at module level.
        from .stagekinds.inference import PromptError, prompt_fields

        template = self.parameters.get("prompt_template") if isinstance(self.parameters, dict) else None
        if template is None:
            return
        try:
            if not isinstance(template, str):
                raise PromptError(_("prompt_template must be a string."))
            prompt_fields(template)
        except PromptError as exc:
            raise ValidationError({"parameters": [f"$.parameters.prompt_template: {exc}"]}) from None

    def save(self, *args, **kwargs):
        # Every door (API, admin, CLI, import) saves through here: secrets never reach the column.
        from .secret_parameters import parameters_protect

        self.parameters, self.secret_parameters_ciphertext = parameters_protect(
            self.parameters or {}, self.secret_parameters_ciphertext
        )
        update_fields = kwargs.get("update_fields")
        if update_fields is not None and "parameters" in update_fields:
            # The two columns move together, or a partial save would lose the secret values.
            kwargs["update_fields"] = {*update_fields, "secret_parameters_ciphertext"}
        super().save(*args, **kwargs)

    def api_key_set(self, plain: str | None) -> None:
        """Store (encrypted) or, with None or "", remove the OpenAI-compatible API key."""
        from dataflare_portal.core.secrets import encrypt_secret

        self.api_key_ciphertext = encrypt_secret(plain or "")

    def api_key(self) -> str:
        """The decrypted API key, for the model call only (never for display)."""
        from dataflare_portal.core.secrets import decrypt_secret

        return decrypt_secret(self.api_key_ciphertext)

    def parameters_with_secrets(self) -> dict:
        """The parameters with secret values decrypted, for the model call (never for display)."""
        from .secret_parameters import parameters_merge

        return parameters_merge(self.parameters or {}, self.secret_parameters_ciphertext)


class QCPolicy(TimestampedModel):
    """Quality acceptance: automatic checks plus AQL-style acceptance sampling for human review."""

    name = models.CharField(_("name"), max_length=100, unique=True)
    description = models.TextField(_("description"), blank=True)
    rules = models.JSONField(_("automatic checks"), default=list, blank=True)
    score_field = models.CharField(_("model score field"), max_length=100, blank=True)
    min_score = models.FloatField(_("minimum model score"), null=True, blank=True)
    aql = models.FloatField(_("AQL (%)"), default=1.0, validators=[MinValueValidator(0.01), MaxValueValidator(25)])
    inspection_level = models.CharField(_("inspection level"), max_length=4, default="II")
    sample_size = models.PositiveIntegerField(_("sample size override"), null=True, blank=True)
    acceptance_number = models.PositiveIntegerField(_("acceptance number override"), null=True, blank=True)
    seed = models.BigIntegerField(_("sampling seed"), default=0)
    require_review = models.BooleanField(_("require human review"), default=True)

    class Meta:
        ordering = ["name"]
        verbose_name = _("QC policy")
        verbose_name_plural = _("QC policies")

    def __str__(self) -> str:
        return self.name

    def clean(self):
        super().clean()
        # Imported here: validation imports these models at module level.
        from .validation import qc_policy_problems

        problems = qc_policy_problems(aql=self.aql, inspection_level=self.inspection_level, rules=self.rules)
        if problems:
            raise ValidationError(problems)


class PipelineTemplate(models.Model):
    """An immutable version of a pipeline template (JSON body); a change makes a new version."""

    name = models.CharField(_("name"), max_length=100)
    version = models.PositiveIntegerField(_("version"))
    schema_version = models.PositiveSmallIntegerField(_("schema version"), default=1)
    description = models.TextField(_("description"), blank=True)
    body = models.JSONField(_("template JSON"))
    checksum = models.CharField(_("checksum"), max_length=64)
    project = models.ForeignKey(
        Project, on_delete=models.SET_NULL, null=True, blank=True, related_name="templates", verbose_name=_("project")
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("created by"),
    )

    class Meta:
        db_table = "pipeline_templates"
        ordering = ["name", "-version"]
        verbose_name = _("pipeline template")
        verbose_name_plural = _("pipeline templates")
        constraints = [
            models.UniqueConstraint(
                fields=["name", "version"],
                name="%(app_label)s_%(class)s_unique_version",
                violation_error_message=_("This template already has a version with this number."),
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"


class Pipeline(TimestampedModel):
    """An ordered list of stages that turns an input dataset into a published dataset version."""

    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="pipelines", verbose_name=_("project"))
    name = models.CharField(_("name"), max_length=100)
    description = models.TextField(_("description"), blank=True)
    status = models.CharField(_("status"), max_length=10, choices=PipelineStatus.choices, default=PipelineStatus.DRAFT)
    input_dataset = models.ForeignKey(
        Dataset,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="consumer_pipelines",
        verbose_name=_("input dataset"),
    )
    output_dataset = models.ForeignKey(
        Dataset,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="producer_pipelines",
        verbose_name=_("output dataset"),
    )
    template = models.ForeignKey(
        PipelineTemplate,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="pipelines",
        verbose_name=_("template version"),
    )
    qc_policy = models.ForeignKey(
        QCPolicy, on_delete=models.PROTECT, null=True, blank=True, related_name="pipelines", verbose_name=_("QC policy")
    )
    batch_size = models.PositiveIntegerField(
        _("records per batch"),
        default=default_batch_size,
        validators=[MinValueValidator(1), MaxValueValidator(1_000_000)],
    )
    max_batch_attempts = models.PositiveSmallIntegerField(
        _("max attempts per batch"), default=3, validators=[MinValueValidator(1)]
    )
    # A token-budget breach (alerts app) may pause new runs of this pipeline until lifted.
    runs_paused = models.BooleanField(_("new runs paused"), default=False)
    paused_reason = models.CharField(_("pause reason"), max_length=300, blank=True)
    # The run parameters it accepts, as a JSON Schema of an object (pipelines/parameters.py).
    parameters_schema = models.JSONField(
        _("run parameters schema"),
        default=dict,
        blank=True,
        help_text=_(
            'JSON Schema of the run parameters, e.g. {"type": "object", "properties": {"lang": {"type": "string"}}}. '
            'Stage configs use them as {"$param": "lang"} or {"$template": "out/{lang}.jsonl"}.'
        ),
    )

    class Meta:
        db_table = "pipelines"
        ordering = ["project__name", "name"]
        verbose_name = _("pipeline")
        verbose_name_plural = _("pipelines")
        constraints = [
            models.UniqueConstraint(
                fields=["project", "name"],
                name="%(app_label)s_%(class)s_unique_name",
                violation_error_message=_("A pipeline with this name already exists in the project."),
            )
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self):
        """The parameters schema must be a usable JSON Schema of an object."""
        super().clean()
        from .parameters import parameters_schema_problems

        problems = parameters_schema_problems(self.parameters_schema)
        if problems:
            path, message = next(iter(problems.items()))
            raise ValidationError({"parameters_schema": f"{path}: {message}"})


class PipelineStage(models.Model):
    """One stage of a pipeline: a stage kind (processor) with its validated config."""

    pipeline = models.ForeignKey(Pipeline, on_delete=models.CASCADE, related_name="stages", verbose_name=_("pipeline"))
    key = models.SlugField(_("stage id"), max_length=50)
    name = models.CharField(_("name"), max_length=100, blank=True)
    kind = models.CharField(_("kind"), max_length=50, db_index=True, help_text=_("A registered stage kind."))
    position = models.PositiveSmallIntegerField(_("position"), default=0)
    config = models.JSONField(_("configuration"), default=dict, blank=True)
    model_config = models.ForeignKey(
        ModelConfig,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="stages",
        verbose_name=_("model config"),
    )

    class Meta:
        db_table = "pipeline_stages"
        ordering = ["pipeline", "position", "id"]
        verbose_name = _("stage")
        verbose_name_plural = _("stages")
        constraints = [
            models.UniqueConstraint(
                fields=["pipeline", "key"],
                name="%(app_label)s_%(class)s_unique_key",
                violation_error_message=_("Stage ids must be unique within a pipeline."),
            ),
            models.CheckConstraint(
                condition=~Q(key=""),
                name="%(app_label)s_%(class)s_key_not_empty",
                violation_error_message=_("A stage needs an id."),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.pipeline}:{self.key}"

    def clean(self):
        super().clean()
        from .stagekinds import StageConfigError, registry

        try:
            kind = registry.get(self.kind)
        except LookupError:
            raise ValidationError({"kind": _("Unknown stage kind %(kind)r.") % {"kind": self.kind}})
        from .parameters import ParameterError, config_references, config_resolve, has_references

        config = self.config or {}
        if has_references(config):
            # Parameters are filled in at run start; here the references must name declared parameters, and
            # the config is checked with the defaults when every reference has one (else at run start).
            schema = (self.pipeline.parameters_schema if self.pipeline_id else {}) or {}
            properties = schema.get("properties") or {}
            try:
                config_references(config, properties, path="$")
                defaults = {n: s["default"] for n, s in properties.items() if isinstance(s, dict) and "default" in s}
                config = config_resolve(config, defaults, partial=True)
            except ParameterError as exc:
                path, messages = next(iter(exc.errors.items()))
                raise ValidationError({"config": f"{path}: {' '.join(messages)}"})
        if not has_references(config):
            try:
                kind.validate_config(config)
            except StageConfigError as exc:
                raise ValidationError({"config": f"{exc.path}: {exc.message}"})
        if kind.needs_model_config and not self.model_config_id:
            raise ValidationError({"model_config": _("This stage kind needs a model config.")})

    @property
    def stage_template(self) -> str:
        """The dashboard's 'stage template' dimension: the stage kind."""
        return self.kind
