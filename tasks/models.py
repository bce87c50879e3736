"""Tasks: runs, stage runs and batches (the engine's state), quarantine, QC review, workers."""

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from catalog.models import Dataset, DatasetVersion, Project
from pipelines.models import Pipeline, PipelineStage, PipelineTemplate, QCPolicy

from .choices import BatchStatus, LotDecision, ReviewDecision, RunEventKind, RunStatus, StageRunStatus


class Task(models.Model):
    """A request to run a pipeline on an input dataset; each execution is a TaskRun."""

    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="tasks", verbose_name=_("project"))
    pipeline = models.ForeignKey(Pipeline, on_delete=models.PROTECT, related_name="tasks", verbose_name=_("pipeline"))
    name = models.CharField(_("name"), max_length=200)
    input_dataset = models.ForeignKey(
        Dataset, on_delete=models.PROTECT, null=True, blank=True, related_name="+", verbose_name=_("input dataset")
    )
    parameters = models.JSONField(_("parameters"), default=dict, blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True, db_index=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("created by"),
    )

    class Meta:
        db_table = "tasks"
        ordering = ["-created_at"]
        verbose_name = _("task")
        verbose_name_plural = _("tasks")

    def __str__(self) -> str:
        return self.name

    def clean(self):
        """The parameters fit the pipeline's parameters schema (the error names the parameter)."""
        super().clean()
        from django.core.exceptions import ValidationError

        from pipelines.parameters import ParameterError, parameters_validate

        if not self.pipeline_id:
            return
        try:
            parameters_validate(self.pipeline.parameters_schema, self.parameters)
        except ParameterError as exc:
            raise ValidationError(
                {"parameters": [f"{path}: {' '.join(messages)}" for path, messages in exc.errors.items()]}
            ) from None


class TaskRun(models.Model):
    """One execution of a task; the truth about its progress lives in its stage runs and batches."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="runs", verbose_name=_("task"))
    number = models.PositiveIntegerField(_("run number"), default=1)
    # Denormalised from the task so dashboard and list filters stay on indexed columns.
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="runs", verbose_name=_("project"))
    pipeline = models.ForeignKey(Pipeline, on_delete=models.PROTECT, related_name="runs", verbose_name=_("pipeline"))
    template = models.ForeignKey(
        PipelineTemplate,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="runs",
        verbose_name=_("template version"),
    )
    status = models.CharField(
        _("status"), max_length=12, choices=RunStatus.choices, default=RunStatus.PENDING, db_index=True
    )
    status_reason = models.TextField(_("status reason"), blank=True)
    # The reason as a code plus parameters (tasks/reasons.py), rendered in the reader's language.
    status_code = models.CharField(_("status code"), max_length=50, blank=True)
    status_params = models.JSONField(_("status parameters"), default=dict, blank=True)
    idempotency_key = models.CharField(_("idempotency key"), max_length=200, null=True, blank=True, unique=True)
    # sha256 of the start request's body: the same key with a different body is refused, not replayed.
    idempotency_fingerprint = models.CharField(_("idempotency fingerprint"), max_length=64, blank=True)
    # Snapshot of the pipeline (stages and configs) taken at start, so edits never change a run.
    pipeline_snapshot = models.JSONField(_("pipeline snapshot"), default=dict, blank=True)
    # The run parameters after validation and defaults; they are what the stage configs were filled with.
    parameters = models.JSONField(_("run parameters"), default=dict, blank=True)
    # A run started by a dataset trigger reads this published version (and names it in its output's lineage).
    input_version = models.ForeignKey(
        DatasetVersion,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("input version"),
    )
    # What started it besides a person: {"kind": "schedule", "schedule": id, "slot": ...} or
    # {"kind": "dataset", "trigger": id, "version": id}; empty for a manual start.
    trigger = models.JSONField(_("started by trigger"), default=dict, blank=True)
    records_in = models.BigIntegerField(_("records in"), default=0)
    records_out = models.BigIntegerField(_("records out"), default=0)
    records_filtered = models.BigIntegerField(_("records filtered"), default=0)
    records_failed = models.BigIntegerField(_("records quarantined"), default=0)
    prompt_tokens = models.BigIntegerField(_("prompt tokens"), default=0)
    completion_tokens = models.BigIntegerField(_("completion tokens"), default=0)
    # Of prompt + completion tokens, those spent on model calls made again after an attempt lost their answer.
    retry_tokens = models.BigIntegerField(_("retry tokens"), default=0)
    output_version = models.ForeignKey(
        DatasetVersion,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("published version"),
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("started by"),
    )
    # A re-run or reprocessing names the run it started from: that run's workspace is kept while it is needed.
    rerun_of = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="reruns",
        verbose_name=_("re-run of"),
    )
    # When the retention duty deleted the run's workspace (tasks/retention.py): no re-run, retry or resume after.
    workspace_pruned_at = models.DateTimeField(_("workspace pruned at"), null=True, blank=True)

    class Meta:
        db_table = "task_runs"
        ordering = ["-created_at"]
        verbose_name = _("task run")
        verbose_name_plural = _("task runs")
        indexes = [
            models.Index(fields=["project", "-created_at"], name="run_project_created_idx"),
            models.Index(fields=["pipeline", "-created_at"], name="run_pipeline_created_idx"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["task", "number"],
                name="%(app_label)s_%(class)s_unique_number",
                violation_error_message=_("This task already has a run with this number."),
            )
        ]

    def __str__(self) -> str:
        return f"{self.task} #{self.number}"


class RunEvent(models.Model):
    """One run transition for automation (started, succeeded, failed, waiting for review, version published).

    Written in the transaction that makes the transition true (tasks/events.py), so a rolled-back
    transition leaves no event; `sequence` counts the run's events of one kind (a resumed run starts
    again), and the unique constraint makes a second write of the same transition fail loudly.
    """

    run = models.ForeignKey(TaskRun, on_delete=models.CASCADE, related_name="events", verbose_name=_("run"))
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+", verbose_name=_("project"))
    kind = models.CharField(_("event"), max_length=40, choices=RunEventKind.choices)
    sequence = models.PositiveIntegerField(_("sequence"), default=1)
    at = models.DateTimeField(_("at"), db_index=True)
    payload = models.JSONField(_("payload"), default=dict)

    class Meta:
        ordering = ["at", "pk"]
        verbose_name = _("run event")
        verbose_name_plural = _("run events")
        constraints = [
            models.UniqueConstraint(
                fields=["run", "kind", "sequence"],
                name="%(app_label)s_%(class)s_once_per_transition",
                violation_error_message=_("This run transition was already recorded."),
            )
        ]
        indexes = [models.Index(fields=["project", "-at"], name="runevent_project_at_idx")]

    def __str__(self) -> str:
        return f"{self.kind} {self.run_id} #{self.sequence}"


class StageRun(models.Model):
    """The execution of one stage within a run."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    run = models.ForeignKey(TaskRun, on_delete=models.CASCADE, related_name="stage_runs", verbose_name=_("run"))
    stage = models.ForeignKey(
        PipelineStage,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="stage_runs",
        verbose_name=_("stage"),
    )
    position = models.PositiveSmallIntegerField(_("position"))
    key = models.SlugField(_("stage id"), max_length=50)
    kind = models.CharField(_("kind"), max_length=50, db_index=True)
    config = models.JSONField(_("configuration"), default=dict, blank=True)
    status = models.CharField(
        _("status"), max_length=12, choices=StageRunStatus.choices, default=StageRunStatus.PENDING
    )
    status_reason = models.TextField(_("status reason"), blank=True)
    # Known once the input is complete (for the first stage: when the reader has split it).
    total_batches = models.PositiveIntegerField(_("batches"), null=True, blank=True)
    batches_done = models.PositiveIntegerField(_("batches done"), default=0)
    records_in = models.BigIntegerField(_("records in"), default=0)
    records_out = models.BigIntegerField(_("records out"), default=0)
    records_filtered = models.BigIntegerField(_("records filtered"), default=0)
    records_failed = models.BigIntegerField(_("records quarantined"), default=0)
    last_error = models.TextField(_("last error"), blank=True)
    # Celery queue its batches go to: "stages" (CPU) or "inference" (gRPC-bound).
    queue = models.CharField(_("queue"), max_length=20, default="stages")
    # What a global step produced (publish result: location, checksum, records, version id).
    result = models.JSONField(_("result"), default=dict, blank=True)
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        ordering = ["run", "position"]
        verbose_name = _("stage run")
        verbose_name_plural = _("stage runs")
        constraints = [
            models.UniqueConstraint(
                fields=["run", "position"],
                name="%(app_label)s_%(class)s_unique_position",
                violation_error_message=_("A run has one stage run per position."),
            )
        ]

    def __str__(self) -> str:
        return f"{self.run_id}:{self.key}"


class Batch(models.Model):
    """A bounded slice of records of one stage run; the unit a worker claims with a lease."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    stage_run = models.ForeignKey(
        StageRun, on_delete=models.CASCADE, related_name="batches", verbose_name=_("stage run")
    )
    index = models.PositiveIntegerField(_("index"))
    status = models.CharField(_("status"), max_length=12, choices=BatchStatus.choices, default=BatchStatus.PENDING)
    # Bumped by every claim; every later write is fenced on it.
    attempt = models.PositiveIntegerField(_("attempt"), default=0)
    failures = models.PositiveSmallIntegerField(_("failed attempts"), default=0)
    crashes = models.PositiveSmallIntegerField(_("crashed attempts"), default=0)
    lease_owner = models.CharField(_("lease owner"), max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(_("lease expires"), null=True, blank=True)
    input_ref = models.JSONField(_("input"), default=dict, blank=True)
    output_ref = models.CharField(_("output"), max_length=500, blank=True)
    canonical_attempt = models.PositiveIntegerField(_("canonical attempt"), null=True, blank=True)
    # Reader position after this batch (the read stage resumes from the last committed one).
    checkpoint = models.JSONField(_("checkpoint"), null=True, blank=True)
    # A WAITING batch (model breaker open) is not claimed before this time; the reaper re-queues it then.
    not_before = models.DateTimeField(_("not before"), null=True, blank=True)
    records_in = models.IntegerField(_("records in"), default=0)
    records_out = models.IntegerField(_("records out"), default=0)
    records_filtered = models.IntegerField(_("records filtered"), default=0)
    records_failed = models.IntegerField(_("records quarantined"), default=0)
    duration_ms = models.IntegerField(_("duration (ms)"), default=0)
    error = models.TextField(_("error"), blank=True)
    queued_at = models.DateTimeField(_("queued at"), null=True, blank=True)
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)

    class Meta:
        ordering = ["stage_run", "index"]
        verbose_name = _("batch")
        verbose_name_plural = _("batches")
        indexes = [
            models.Index(fields=["status", "lease_expires_at"], name="batch_status_lease_idx"),
            models.Index(fields=["status", "queued_at"], name="batch_status_queued_idx"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["stage_run", "index"],
                name="%(app_label)s_%(class)s_unique_index",
                violation_error_message=_("A stage run has one batch per index."),
            )
        ]

    def __str__(self) -> str:
        return f"{self.stage_run_id}#{self.index}"


class QuarantinedRecord(models.Model):
    """A record a stage could not process, kept with its reason instead of being retried."""

    stage_run = models.ForeignKey(
        StageRun, on_delete=models.CASCADE, related_name="quarantined", verbose_name=_("stage run")
    )
    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="quarantined", verbose_name=_("batch"))
    attempt = models.PositiveIntegerField(_("attempt"))
    record_index = models.PositiveIntegerField(_("record index in batch"))
    code = models.CharField(_("code"), max_length=50)
    reason = models.TextField(_("reason"))
    record = models.JSONField(_("record"), null=True, blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)

    class Meta:
        ordering = ["stage_run", "batch__index", "record_index"]
        verbose_name = _("quarantined record")
        verbose_name_plural = _("quarantined records")
        constraints = [
            models.UniqueConstraint(
                fields=["batch", "attempt", "record_index"],
                name="%(app_label)s_%(class)s_unique_record",
                violation_error_message=_("This record is already quarantined for this attempt."),
            )
        ]

    def __str__(self) -> str:
        return f"{self.batch_id}[{self.record_index}] {self.code}"


class QCLot(models.Model):
    """The QC decision on a run's output lot: sampling plan, defects found, and the verdict."""

    stage_run = models.OneToOneField(
        StageRun, on_delete=models.CASCADE, related_name="qc_lot", verbose_name=_("stage run")
    )
    policy = models.ForeignKey(QCPolicy, on_delete=models.PROTECT, related_name="lots", verbose_name=_("QC policy"))
    lot_size = models.PositiveIntegerField(_("lot size"))
    sample_size = models.PositiveIntegerField(_("sample size"))
    acceptance_number = models.PositiveIntegerField(_("acceptance number"))
    auto_defects = models.PositiveIntegerField(_("defects found by checks"), default=0)
    review_defects = models.PositiveIntegerField(_("defects found by review"), default=0)
    decision = models.CharField(_("decision"), max_length=12, choices=LotDecision.choices, default=LotDecision.PENDING)
    evidence = models.JSONField(_("evidence"), default=dict, blank=True)
    decided_at = models.DateTimeField(_("decided at"), null=True, blank=True)
    override_reason = models.TextField(_("override reason"), blank=True)
    override_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("overridden by"),
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)

    class Meta:
        verbose_name = _("QC lot")
        verbose_name_plural = _("QC lots")
        constraints = [
            models.CheckConstraint(
                condition=~Q(decision="overridden") | ~Q(override_reason=""),
                name="%(app_label)s_%(class)s_override_has_reason",
                violation_error_message=_("An override needs a reason."),
            )
        ]

    def __str__(self) -> str:
        return _("QC lot %(lot)s: %(decision)s") % {"lot": self.pk, "decision": self.get_decision_display()}


class ReviewItem(models.Model):
    """One sampled record awaiting a human accept/reject in the review queue."""

    lot = models.ForeignKey(QCLot, on_delete=models.CASCADE, related_name="items", verbose_name=_("lot"))
    sequence = models.PositiveIntegerField(_("sequence"))
    record_key = models.CharField(_("record key"), max_length=200)
    record = models.JSONField(_("record"))
    decision = models.CharField(
        _("decision"), max_length=10, choices=ReviewDecision.choices, default=ReviewDecision.PENDING, db_index=True
    )
    reason = models.TextField(_("reason"), blank=True)
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("reviewer"),
    )
    decided_at = models.DateTimeField(_("decided at"), null=True, blank=True)

    class Meta:
        ordering = ["lot", "sequence"]
        verbose_name = _("review item")
        verbose_name_plural = _("review queue")
        constraints = [
            models.UniqueConstraint(
                fields=["lot", "sequence"],
                name="%(app_label)s_%(class)s_unique_sequence",
                violation_error_message=_("A lot has one review item per sequence number."),
            )
        ]

    def __str__(self) -> str:
        return f"{self.lot_id}/{self.sequence}"


class WorkerHeartbeat(models.Model):
    """A Celery worker's last sign of life, for the workers page."""

    name = models.CharField(_("worker"), max_length=200, unique=True)
    hostname = models.CharField(_("host"), max_length=200, blank=True)
    pid = models.PositiveIntegerField(_("pid"), null=True, blank=True)
    queues = models.JSONField(_("queues"), default=list, blank=True)
    started_at = models.DateTimeField(_("started at"), auto_now_add=True)
    last_seen_at = models.DateTimeField(_("last seen"), db_index=True)
    batches_done = models.BigIntegerField(_("batches done"), default=0)

    class Meta:
        ordering = ["-last_seen_at"]
        verbose_name = _("worker")
        verbose_name_plural = _("workers")

    def __str__(self) -> str:
        return self.name
