"""Schedules and dataset triggers: what starts runs besides a person, and the record of every fire."""

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone as dj_timezone
from django.utils.translation import gettext_lazy as _

from catalog.models import Dataset, DatasetVersion
from pipelines.models import Pipeline
from tasks.models import TaskRun

from .choices import CatchUp, FireOutcome, OverlapPolicy, ScheduleKind

# Fire reasons are stored as a code plus parameters and rendered in the reader's language.
REASONS = {
    "run_active": _("The previous run %(run)s is still going."),
    "queued_behind": _("Waiting for the previous run %(run)s to end."),
    "refused": _("The run could not start: %(error)s"),
    "caught_up": _("Missed during downtime; run by the catch-up policy."),
}


def reason_render(code: str, params: dict | None) -> str:
    text = REASONS.get(code)
    if text is None:
        return code
    try:
        return str(text) % (params or {})
    except (KeyError, TypeError, ValueError):
        return str(text)


class Schedule(models.Model):
    """A cron or interval schedule of one pipeline, with its overlap and catch-up policies."""

    pipeline = models.ForeignKey(
        Pipeline, on_delete=models.CASCADE, related_name="schedules", verbose_name=_("pipeline")
    )
    name = models.CharField(_("name"), max_length=100)
    enabled = models.BooleanField(_("enabled"), default=True, help_text=_("Clear to pause the schedule."))
    kind = models.CharField(_("kind"), max_length=10, choices=ScheduleKind.choices, default=ScheduleKind.CRON)
    cron = models.CharField(
        _("cron expression"), max_length=120, blank=True, help_text=_("minute hour day-of-month month day-of-week")
    )
    timezone = models.CharField(
        _("time zone"), max_length=64, default="UTC", help_text=_("IANA name, e.g. Asia/Shanghai, Europe/Berlin, UTC.")
    )
    interval_seconds = models.PositiveIntegerField(
        _("interval (seconds)"),
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(366 * 24 * 3600)],
    )
    anchor_at = models.DateTimeField(
        _("interval anchor"),
        default=dj_timezone.now,
        help_text=_("Interval slots fall at this instant plus whole intervals."),
    )
    overlap = models.CharField(
        _("if the previous run is still going"),
        max_length=10,
        choices=OverlapPolicy.choices,
        default=OverlapPolicy.SKIP,
    )
    catchup = models.CharField(
        _("catch-up after downtime"), max_length=10, choices=CatchUp.choices, default=CatchUp.LATEST
    )
    catchup_limit = models.PositiveSmallIntegerField(
        _("catch-up limit"),
        default=10,
        validators=[MinValueValidator(1), MaxValueValidator(1000)],
        help_text=_("With 'every missed slot': at most this many of the latest missed slots run."),
    )
    parameters = models.JSONField(_("run parameters"), default=dict, blank=True)
    # Every slot up to here has been handled (fired, dropped by the catch-up policy, or skipped).
    last_slot = models.DateTimeField(_("last slot handled"), null=True, blank=True)
    next_fire_at = models.DateTimeField(_("next fire time"), null=True, blank=True, db_index=True)
    last_outcome = models.CharField(_("last outcome"), max_length=10, choices=FireOutcome.choices, blank=True)
    last_fired_at = models.DateTimeField(_("last fired at"), null=True, blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("created by"),
    )

    class Meta:
        ordering = ["pipeline", "name"]
        verbose_name = _("schedule")
        verbose_name_plural = _("schedules")
        constraints = [
            models.UniqueConstraint(
                fields=["pipeline", "name"],
                name="%(app_label)s_%(class)s_unique_name",
                violation_error_message=_("This pipeline already has a schedule with this name."),
            ),
            models.CheckConstraint(
                condition=models.Q(kind="cron") | models.Q(interval_seconds__gte=1),
                name="%(app_label)s_%(class)s_interval_set",
                violation_error_message=_("An interval schedule needs an interval."),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.pipeline}: {self.name}"

    def clean(self):
        """Cron needs a valid expression and time zone; interval needs seconds; parameters fit the pipeline."""
        super().clean()
        from pipelines.parameters import ParameterError, parameters_validate

        from .slots import ScheduleSpecError, cron_check, timezone_check

        errors = {}
        try:
            zone = timezone_check(self.timezone)
        except ScheduleSpecError as exc:
            errors[exc.field] = exc.message
            zone = None
        if self.kind == ScheduleKind.CRON:
            try:
                self.cron = cron_check(self.cron, zone)
            except ScheduleSpecError as exc:
                errors[exc.field] = exc.message
        elif not self.interval_seconds:
            errors["interval_seconds"] = _("An interval schedule needs an interval.")
        if self.pipeline_id and not errors.get("parameters"):
            try:
                parameters_validate(self.pipeline.parameters_schema, self.parameters)
            except ParameterError as exc:
                path, messages = next(iter(exc.errors.items()))
                errors["parameters"] = f"{path}: {' '.join(messages)}"
        if errors:
            raise ValidationError(errors)

    @property
    def last_reason(self) -> str:
        fire = self.fires.order_by("-slot").first()
        return fire.reason if fire is not None else ""


class ScheduleFire(models.Model):
    """One slot of a schedule and what became of it; (schedule, slot) is unique, so a slot fires once."""

    schedule = models.ForeignKey(Schedule, on_delete=models.CASCADE, related_name="fires", verbose_name=_("schedule"))
    slot = models.DateTimeField(_("slot"))
    outcome = models.CharField(_("outcome"), max_length=10, choices=FireOutcome.choices)
    reason_code = models.CharField(_("reason code"), max_length=30, blank=True)
    reason_params = models.JSONField(_("reason parameters"), default=dict, blank=True)
    run = models.ForeignKey(
        TaskRun, on_delete=models.SET_NULL, null=True, blank=True, related_name="+", verbose_name=_("run")
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)

    class Meta:
        ordering = ["-slot"]
        verbose_name = _("schedule fire")
        verbose_name_plural = _("schedule fires")
        constraints = [
            models.UniqueConstraint(
                fields=["schedule", "slot"],
                name="%(app_label)s_%(class)s_one_per_slot",
                violation_error_message=_("This slot has already fired."),
            )
        ]
        indexes = [models.Index(fields=["schedule", "outcome"], name="sched_fire_outcome_idx")]

    def __str__(self) -> str:
        return f"{self.schedule} @ {self.slot:%Y-%m-%d %H:%M:%S}"

    @property
    def reason(self) -> str:
        return reason_render(self.reason_code, self.reason_params) if self.reason_code else ""


class DatasetTrigger(models.Model):
    """Start a pipeline whenever a new version of a dataset is published (that version is the run's input)."""

    pipeline = models.ForeignKey(
        Pipeline, on_delete=models.CASCADE, related_name="dataset_triggers", verbose_name=_("pipeline")
    )
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="triggers", verbose_name=_("dataset"))
    enabled = models.BooleanField(_("enabled"), default=True)
    parameters = models.JSONField(_("run parameters"), default=dict, blank=True)
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
        ordering = ["pipeline", "dataset"]
        verbose_name = _("dataset trigger")
        verbose_name_plural = _("dataset triggers")
        constraints = [
            models.UniqueConstraint(
                fields=["pipeline", "dataset"],
                name="%(app_label)s_%(class)s_unique_pair",
                violation_error_message=_("This pipeline already has a trigger on this dataset."),
            )
        ]

    def __str__(self) -> str:
        return f"{self.dataset} → {self.pipeline}"

    def clean(self):
        """The dataset is in the pipeline's project and is not its own output; the parameters fit."""
        super().clean()
        from pipelines.parameters import ParameterError, parameters_validate

        if not self.pipeline_id or not self.dataset_id:
            return
        if self.dataset.project_id != self.pipeline.project_id:
            raise ValidationError({"dataset": _("The dataset belongs to another project.")})
        if self.dataset_id == self.pipeline.output_dataset_id:
            raise ValidationError({"dataset": _("A pipeline cannot be triggered by its own output dataset.")})
        loop = self.loop_through()
        if loop:
            raise ValidationError(
                {"dataset": _("This trigger would start a loop of runs: %(loop)s.") % {"loop": " → ".join(loop)}}
            )
        try:
            parameters_validate(self.pipeline.parameters_schema, self.parameters)
        except ParameterError as exc:
            path, messages = next(iter(exc.errors.items()))
            raise ValidationError({"parameters": f"{path}: {' '.join(messages)}"}) from None

    def loop_through(self) -> list[str]:
        """The chain of datasets and pipelines by which this trigger's run would trigger itself again.

        Its pipeline publishes to its output dataset; enabled triggers on that dataset start other
        pipelines, which publish to theirs, and so on. Empty when no chain leads back to this trigger's
        dataset (a loop would start runs for ever, each publish firing the next).
        """
        start = self.pipeline.output_dataset_id
        if not start or not self.enabled:
            return []
        edges: dict[int, list[tuple[Pipeline, int]]] = {}
        others = DatasetTrigger.objects.filter(enabled=True).exclude(pk=self.pk).select_related("pipeline")
        for trigger in others:
            if trigger.pipeline.output_dataset_id:
                edges.setdefault(trigger.dataset_id, []).append((trigger.pipeline, trigger.pipeline.output_dataset_id))
        came_from: dict[int, tuple[int, Pipeline] | None] = {start: None}
        queue = [start]
        while queue:
            dataset_id = queue.pop(0)
            if dataset_id == self.dataset_id:
                chain = []
                while came_from[dataset_id] is not None:
                    previous, pipeline = came_from[dataset_id]
                    chain[:0] = [pipeline.name, self._dataset_name(dataset_id)]
                    dataset_id = previous
                head = [self._dataset_name(self.dataset_id), self.pipeline.name, self._dataset_name(start)]
                return head + chain
            for pipeline, output in edges.get(dataset_id, []):
                if output not in came_from:
                    came_from[output] = (dataset_id, pipeline)
                    queue.append(output)
        return []

    @staticmethod
    def _dataset_name(dataset_id: int) -> str:
        return Dataset.objects.filter(pk=dataset_id).values_list("name", flat=True).first() or str(dataset_id)


class TriggerFire(models.Model):
    """One published version seen by a trigger; (trigger, version) is unique, so a version starts one run."""

    trigger = models.ForeignKey(
        DatasetTrigger, on_delete=models.CASCADE, related_name="fires", verbose_name=_("trigger")
    )
    dataset_version = models.ForeignKey(
        DatasetVersion, on_delete=models.CASCADE, related_name="+", verbose_name=_("dataset version")
    )
    outcome = models.CharField(_("outcome"), max_length=10, choices=FireOutcome.choices)
    reason_code = models.CharField(_("reason code"), max_length=30, blank=True)
    reason_params = models.JSONField(_("reason parameters"), default=dict, blank=True)
    run = models.ForeignKey(
        TaskRun, on_delete=models.SET_NULL, null=True, blank=True, related_name="+", verbose_name=_("run")
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("trigger fire")
        verbose_name_plural = _("trigger fires")
        constraints = [
            models.UniqueConstraint(
                fields=["trigger", "dataset_version"],
                name="%(app_label)s_%(class)s_one_per_version",
                violation_error_message=_("This version has already triggered this pipeline."),
            )
        ]

    def __str__(self) -> str:
        return f"{self.trigger} @ {self.dataset_version}"

    @property
    def reason(self) -> str:
        return reason_render(self.reason_code, self.reason_params) if self.reason_code else ""
