"""Engine services: start, cancel, retry and resume runs, and the reaper; every interface calls these."""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import timedelta

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F, Max, Q
from django.utils import timezone
from django.utils.translation import gettext as _

from dataflare_portal.core.models import AuditAction
from dataflare_portal.core.services import audit_record

from . import engine, partition
from .choices import BatchStatus, RunEventKind, RunStatus, StageRunStatus
from .events import run_event_record
from .models import Batch, StageRun, Task, TaskRun
from .reasons import reason_render

logger = logging.getLogger(__name__)

__all__ = [
    "IdempotencyConflict",
    "RunRefused",
    "reap",
    "run_cancel",
    "run_resume",
    "run_retry",
    "run_start",
]


class RunRefused(ValidationError):
    """A run cannot start or change state now; the message names the field or the reason."""


class IdempotencyConflict(ValidationError):
    """The Idempotency-Key was already used for a different request."""


def _user(actor):
    return actor if actor is not None and getattr(actor, "is_authenticated", False) else None


def _fingerprint(*, pipeline, input_dataset, parameters, task) -> str:
    body = {
        "pipeline": pipeline.pk,
        "input_dataset": getattr(input_dataset, "pk", None),
        "parameters": parameters or {},
        "task": getattr(task, "pk", None),
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _replay(key: str, fingerprint: str) -> TaskRun | None:
    existing = TaskRun.objects.filter(idempotency_key=key).first()
    if existing is None:
        return None
    if existing.idempotency_fingerprint != fingerprint:
        raise IdempotencyConflict(
            {"idempotency_key": [_("This Idempotency-Key was already used for a different request.")]},
            code="idempotency_conflict",
        )
    return existing


def _stage_group(kind_name: str) -> tuple[str, str]:
    """(group, queue) of a stage kind; raises ValidationError for an unknown kind."""
    if kind_name == "read":
        return "per_record", engine.QUEUE_STAGES
    if kind_name == "publish":
        return "global", engine.QUEUE_STAGES
    from pipelines.stagekinds import registry

    kind = registry.get(kind_name)
    group = str(getattr(kind.group, "value", kind.group))
    queue = engine.QUEUE_INFERENCE if getattr(kind, "needs_model_config", False) else engine.QUEUE_STAGES
    return group, queue


def _validate(pipeline, parameters: dict, template=None) -> None:
    """The pipeline (or, for a run of another template version, that version's body) validates."""
    try:
        from pipelines.validation import pipeline_validate, template_validate
    except ImportError:
        return
    if template is None:
        report = pipeline_validate(pipeline, probe=False, parameters=parameters)
    else:
        from pipelines.parameters import config_resolve
        from pipelines.templates_io import template_export_body

        current = template_export_body(pipeline)
        # The version's stages over the pipeline's datasets and QC policy (what the run will use).
        body = {**template.body, **{k: current[k] for k in ("input_dataset", "output_dataset", "qc_policy")}}
        body["stages"] = [
            {**stage, "config": config_resolve(stage.get("config") or {}, parameters, partial=True)}
            for stage in template.body.get("stages") or []
        ]
        report = template_validate(body, probe=False, project=pipeline.project)
    if not report.ok:
        raise RunRefused(
            {"pipeline": [_("The pipeline does not validate: %(summary)s") % {"summary": report.summary()}]},
            code="invalid_pipeline",
        )


def _parameters(pipeline, parameters, template=None) -> dict:
    """The run's parameters validated against the pipeline's schema (or the template version's, for a run of
    that version), defaults filled in (RunRefused names the field)."""
    from pipelines.parameters import ParameterError, parameters_validate

    schema = pipeline.parameters_schema if template is None else (template.body or {}).get("parameters_schema")
    try:
        return parameters_validate(schema, parameters)
    except ParameterError as exc:
        raise RunRefused(exc.errors, code="invalid_parameters") from None


def _stage_config(stage, index: int, parameters: dict) -> dict:
    """A stage's config with the run's parameters filled in by the safe renderer; then checked for its kind."""
    from pipelines.parameters import ParameterError, config_resolve, has_references
    from pipelines.stagekinds import StageConfigError, registry

    config = stage.config or {}
    if not has_references(config):
        return config
    try:
        config = config_resolve(config, parameters, path=f"stages[{index}].config")
    except ParameterError as exc:
        raise RunRefused(exc.errors, code="invalid_parameters") from None
    try:
        registry.get(stage.kind).validate_config(config)
    except StageConfigError as exc:
        path = exc.path[1:] if exc.path.startswith("$") else exc.path
        raise RunRefused(
            {f"stages[{index}].config{path}": [_("With these parameters: %(message)s") % {"message": exc.message}]},
            code="invalid_parameters",
        ) from None
    except LookupError:
        pass  # an unknown kind is refused by _stage_group below, with its path
    return config


def _stage_resolved(stage, index: int, parameters: dict) -> dict:
    """The stage's config as the run records it: parameters filled in, then its kind's moving references fixed."""
    from pipelines.stagekinds import StageConfigError, registry

    config = _stage_config(stage, index, parameters)
    try:
        kind = registry.get(stage.kind)
    except LookupError:
        return config  # refused with its path by _stage_group
    try:
        return kind.resolve_for_run(config)
    except StageConfigError as exc:
        path = exc.path[1:] if exc.path.startswith("$") else exc.path
        raise RunRefused({f"stages[{index}].config{path}": [exc.message]}, code="invalid_pipeline") from None


def template_stages(template, pipeline) -> list:
    """A template version's stages as unsaved stage rows of the pipeline (a run of that version executes them)."""
    from pipelines.models import ModelConfig, PipelineStage

    specs = (template.body or {}).get("stages") or []
    names = {s.get("model_config") for s in specs if s.get("model_config")}
    configs = {mc.name: mc for mc in ModelConfig.objects.filter(name__in=names)}
    stages = []
    for position, spec in enumerate(specs):
        model_config = configs.get(spec.get("model_config")) if spec.get("model_config") else None
        if spec.get("model_config") and model_config is None:
            raise RunRefused(
                {
                    f"stages[{position}].model_config": [
                        _("Template %(t)s uses model configuration %(m)s, which does not exist any more.")
                        % {"t": template, "m": spec["model_config"]}
                    ]
                },
                code="invalid_pipeline",
            )
        stages.append(
            PipelineStage(
                pipeline=pipeline,
                key=spec["id"],
                kind=spec["kind"],
                name=spec.get("name", ""),
                position=position,
                config=spec.get("config") or {},
                model_config=model_config,
            )
        )
    return stages


def _snapshot(
    pipeline,
    input_dataset,
    parameters: dict | None = None,
    input_version=None,
    *,
    template=None,
    input_range: dict | None = None,
) -> dict:
    """The run's frozen definition: its stages (the pipeline's, or those of `template`, another version of its
    template), their resolved configs, the input (dataset, version, record range) and the pipeline's settings."""
    from pipelines.stagekinds import StageConfigError

    if template is not None:
        stages = template_stages(template, pipeline)
    else:
        stages = list(pipeline.stages.order_by("position", "id"))
    if not stages or stages[0].kind != "read":
        # A pipeline without an explicit read stage reads its input dataset first.
        stages_spec = [{"position": 0, "key": "read", "kind": "read", "config": {}, "stage_id": None}]
    else:
        stages_spec = []
    for stage in stages:
        stages_spec.append(
            {
                "position": len(stages_spec),
                "key": stage.key,
                "kind": stage.kind,
                "config": _stage_resolved(stage, len(stages_spec), parameters or {}),
                "stage_id": stage.pk,
                "model_config_id": stage.model_config_id,
            }
        )
    for i, spec in enumerate(stages_spec):
        try:
            spec["group"], spec["queue"] = _stage_group(spec["kind"])
        except StageConfigError as exc:
            raise RunRefused({f"stages[{i}].kind": [str(exc)]}, code="invalid_pipeline")
        if spec["group"] == "global" and spec["kind"] not in engine.MARKER_KINDS and engine.PARTITIONED_ENABLED:
            # Fixed for the run: the units before it emit their keys into this many partitions (tasks/partition.py).
            spec["partitions"] = partition.planned_partitions(spec["kind"], spec["config"])
    return {
        "pipeline": {
            "id": pipeline.pk,
            "name": pipeline.name,
            "batch_size": pipeline.batch_size,
            "max_batch_attempts": pipeline.max_batch_attempts,
            "input_dataset_id": input_dataset.pk,
            "input_version_id": getattr(input_version, "pk", None),
            "output_dataset_id": pipeline.output_dataset_id,
            "qc_policy_id": pipeline.qc_policy_id,
            "template_id": template.pk if template is not None else pipeline.template_id,
            # The stages are that template version's, not the pipeline's (a backfill with a chosen version).
            **({"stages_from_template": template.pk} if template is not None else {}),
            # 1-based, inclusive: {"first": 1, "last": None} is the whole input (tasks/engine.py reads the slice).
            **({"input_range": input_range} if input_range else {}),
        },
        "stages": stages_spec,
    }


def run_start(
    *,
    pipeline,
    actor,
    input_dataset=None,
    idempotency_key: str | None = None,
    parameters: dict | None = None,
    task: Task | None = None,
    input_version=None,
    trigger: dict | None = None,
    template=None,
    input_range: dict | None = None,
) -> TaskRun:
    """Start a run: refuse paused scopes, validate parameters and pipeline, snapshot, create the rows, ring the
    doorbell on commit. `input_version` (a published DatasetVersion) makes the run read that version;
    `input_range` ({"first", "last"}, 1-based inclusive) only those records of it; `template` (a version of
    the pipeline's template) runs that version's stages instead of the pipeline's current ones."""
    key = (idempotency_key or "").strip() or None
    if key and len(key) > 200:
        raise RunRefused({"idempotency_key": [_("At most 200 characters.")]})
    fingerprint = _fingerprint(pipeline=pipeline, input_dataset=input_dataset, parameters=parameters, task=task)
    if key:
        existing = _replay(key, fingerprint)
        if existing is not None:
            existing._replayed = True
            return existing
    project = pipeline.project
    if project.runs_paused:
        raise RunRefused(
            {
                "pipeline": [
                    _("New runs of project %(p)s are paused: %(r)s") % {"p": project, "r": project.paused_reason}
                ]
            },
            code="paused",
        )
    if pipeline.runs_paused:
        raise RunRefused(
            {
                "pipeline": [
                    _("New runs of pipeline %(p)s are paused: %(r)s") % {"p": pipeline, "r": pipeline.paused_reason}
                ]
            },
            code="paused",
        )
    if input_version is not None:
        input_dataset = input_version.dataset
    input_dataset = input_dataset or (task.input_dataset if task else None) or pipeline.input_dataset
    if input_dataset is None:
        raise RunRefused({"input_dataset": [_("The pipeline has no input dataset; choose one.")]})
    if not parameters and task is not None:
        parameters = task.parameters
    values = _parameters(pipeline, parameters, template)
    _validate(pipeline, values, template)
    snapshot = _snapshot(pipeline, input_dataset, values, input_version, template=template, input_range=input_range)
    now = timezone.now()
    try:
        with transaction.atomic():
            if task is None:
                task = Task(
                    project=project,
                    pipeline=pipeline,
                    name=f"{pipeline.name} {now:%Y-%m-%d %H:%M:%S}",
                    input_dataset=input_dataset,
                    parameters=values,
                    created_by=_user(actor),
                )
                task.full_clean()
                task.save()
            number = (TaskRun.objects.filter(task=task).aggregate(n=Max("number"))["n"] or 0) + 1
            run = TaskRun(
                task=task,
                number=number,
                project=project,
                pipeline=pipeline,
                template=template if template is not None else pipeline.template,
                status=RunStatus.RUNNING,
                idempotency_key=key,
                idempotency_fingerprint=fingerprint if key else "",
                pipeline_snapshot=snapshot,
                parameters=values,
                input_version=input_version,
                trigger=trigger or {},
                started_at=now,
                created_by=_user(actor),
            )
            run.full_clean(exclude=["idempotency_key"])
            run.save()
            stage_runs = StageRun.objects.bulk_create(
                [
                    StageRun(
                        run=run,
                        stage_id=s["stage_id"],
                        position=s["position"],
                        key=s["key"],
                        kind=s["kind"],
                        config=s["config"],
                        queue=s["queue"],
                        status=StageRunStatus.RUNNING if s["position"] == 0 else StageRunStatus.PENDING,
                        started_at=now if s["position"] == 0 else None,
                    )
                    for s in snapshot["stages"]
                ]
            )
            first = Batch.objects.create(
                stage_run=stage_runs[0], index=0, status=BatchStatus.QUEUED, input_ref={"start": None}, queued_at=now
            )
            audit_record(
                actor=actor,
                action=AuditAction.RUN,
                instance=run,
                after={
                    "pipeline": pipeline.pk,
                    "input_dataset": input_dataset.pk,
                    "parameters": values,
                    **({"input_version": input_version.pk} if input_version is not None else {}),
                    **({"trigger": trigger} if trigger else {}),
                },
                message=_("Started run %(run)s of pipeline %(p)s.") % {"run": run, "p": pipeline},
            )
            run_event_record(run_id=run.pk, kind=RunEventKind.STARTED, now=now)
            engine.dispatch_on_commit([(str(first.pk), stage_runs[0].queue, False)])
    except IntegrityError:
        # Two requests with the same Idempotency-Key raced; the first one won.
        if key:
            existing = _replay(key, fingerprint)
            if existing is not None:
                existing._replayed = True
                return existing
        raise
    return run


def run_cancel(*, run: TaskRun, actor) -> TaskRun:
    """Cancel a run: queued work is cancelled now, batches in flight finish or abort, then the run is cancelled."""
    now = timezone.now()
    who_params = {"who": getattr(actor, "username", None) or "system"}
    with transaction.atomic():
        n = TaskRun.objects.filter(pk=run.pk, status__in=RunStatus.active()).update(
            status=RunStatus.CANCELLING,
            status_reason=reason_render("cancelled_by", who_params),
            status_code="cancelled_by",
            status_params=who_params,
        )
        if not n:
            raise RunRefused({"status": [_("Only an active run can be cancelled (it is %(s)s).") % {"s": run.status}]})
        Batch.objects.filter(
            stage_run__run=run, status__in=[BatchStatus.PENDING, BatchStatus.QUEUED, BatchStatus.WAITING]
        ).update(status=BatchStatus.CANCELLED, finished_at=now)
        engine._run_cancel_finalize(run.pk)
        audit_record(actor=actor, action=AuditAction.CANCEL, instance=run, message=_("Cancelled run %s.") % run)
    run.refresh_from_db()
    return run


def _reopen(run: TaskRun, *, batch_filter: Q, actor, action: str, message: str, fresh_budgets: bool = True) -> TaskRun:
    """Put a stopped run back to work: reset the chosen batches, re-open stages, re-queue, dispatch.

    With fresh_budgets=False (resume) a batch keeps its failure and crash counts: a poison batch that
    spent its crash budget gets one more attempt per resume, not a fresh budget; retry grants one.
    """
    now = timezone.now()
    with transaction.atomic():
        # Conditional on the workspace: the retention duty marks it pruned under the same row (tasks/retention.py).
        n = TaskRun.objects.filter(pk=run.pk, status__in=RunStatus.resumable(), workspace_pruned_at=None).update(
            status=RunStatus.RUNNING, status_reason="", finished_at=None
        )
        if not n:
            current = TaskRun.objects.filter(pk=run.pk).first()
            if current is not None and current.workspace_pruned_at is not None:
                from .retention import workspace_pruned_message

                raise RunRefused({"run": [workspace_pruned_message(current)]}, code="workspace_pruned")
            raise RunRefused(
                {
                    "status": [
                        _("Only a failed, crashed or cancelled run can do this (it is %(s)s).") % {"s": run.status}
                    ]
                }
            )
        run_event_record(run_id=run.pk, kind=RunEventKind.STARTED, now=now)
        budgets = {"failures": 0, "crashes": 0} if fresh_budgets else {}
        Batch.objects.filter(stage_run__run=run).filter(batch_filter).update(
            status=BatchStatus.QUEUED,
            **budgets,
            error="",
            queued_at=now,
            not_before=None,
            lease_owner="",
            lease_expires_at=None,
            finished_at=None,
        )
        StageRun.objects.filter(run=run).exclude(status=StageRunStatus.SUCCEEDED).update(
            status=StageRunStatus.RUNNING, status_reason="", finished_at=None
        )
        to_send = engine.run_advance(run.pk)
        spec = engine.run_spec(run.pk)
        queue_of = {s.stage_run_id: (s.queue, s.is_global) for s in spec.stages}
        for bid, sr_id in Batch.objects.filter(stage_run__run=run, status=BatchStatus.QUEUED).values_list(
            "pk", "stage_run_id"
        ):
            queue, is_global = queue_of[sr_id]
            to_send.append((str(bid), queue, is_global))
        audit_record(actor=actor, action=action, instance=run, message=message)
        engine.dispatch_on_commit(list(dict.fromkeys(to_send)))
    run.refresh_from_db()
    return run


def run_resume(*, run: TaskRun, actor) -> TaskRun:
    """Resume a crashed, failed or cancelled run from its last good checkpoint (done batches are kept)."""
    return _reopen(
        run,
        batch_filter=Q(
            status__in=[
                BatchStatus.FAILED,
                BatchStatus.CRASHED,
                BatchStatus.CANCELLED,
                BatchStatus.PENDING,
                BatchStatus.WAITING,
            ]
        ),
        actor=actor,
        action=AuditAction.RESUME,
        message=_("Resumed run %s.") % run,
        fresh_budgets=False,
    )


def run_retry(*, run: TaskRun, actor, stage_run: StageRun | None = None) -> TaskRun:
    """Retry failed work: the failed batches of one stage (or of every stage) get new attempts."""
    if stage_run is not None and stage_run.run_id != run.pk:
        raise RunRefused({"stage_run": [_("This stage run belongs to another run.")]})
    if stage_run is not None and stage_run.status not in (StageRunStatus.FAILED, StageRunStatus.CRASHED):
        raise RunRefused({"stage_run": [_("Only a failed or crashed stage can be retried.")]})
    failed = Q(status__in=[BatchStatus.FAILED, BatchStatus.CRASHED])
    if stage_run is not None:
        failed &= Q(stage_run=stage_run)
    # Batches parked while the run was stopped (created by in-flight work) go too, or the run would stall.
    return _reopen(
        run,
        batch_filter=failed | Q(status=BatchStatus.PENDING),
        actor=actor,
        action=AuditAction.RETRY,
        message=_("Retried %(what)s of run %(run)s.")
        % {"what": stage_run.key if stage_run else _("failed stages"), "run": run},
    )


# ---- reaper ---------------------------------------------------------------------------------
def _crash_batch(batch: Batch, now, budget: int) -> list:
    """A lease expired: re-queue within the crash budget, else the batch, stage and run crash."""
    spec = engine.run_spec(batch.stage_run.run_id)
    stage = spec.stages[batch.stage_run.position]
    with transaction.atomic():
        n = Batch.objects.filter(
            pk=batch.pk, attempt=batch.attempt, status=BatchStatus.RUNNING, lease_expires_at__lt=now
        ).update(
            status=BatchStatus.QUEUED,
            crashes=F("crashes") + 1,
            lease_owner="",
            lease_expires_at=None,
            queued_at=now,
            error=_("Lease expired: the worker %(owner)s stopped answering.") % {"owner": batch.lease_owner},
        )
        if not n:
            return None
        crashes = Batch.objects.values_list("crashes", flat=True).get(pk=batch.pk)
        run_status = engine.lock_run(spec.run_id)
        if run_status == RunStatus.CANCELLING:
            Batch.objects.filter(pk=batch.pk, status=BatchStatus.QUEUED).update(
                status=BatchStatus.CANCELLED, finished_at=now
            )
            engine._run_cancel_finalize(spec.run_id)
            return []
        if crashes < budget:
            if run_status in engine.ACTIVE_RUN:
                item = (str(batch.pk), stage.queue, stage.is_global)
                engine.dispatch_on_commit([item])
                return [item]
            return []
        Batch.objects.filter(pk=batch.pk).update(status=BatchStatus.CRASHED, finished_at=now)
        # The unit that crashed: the batch's stage and the stages fused into it (any of them may be the
        # one that took the worker down), and the input records, so a poison record can be found.
        unit = [stage, *engine.fusable_followers(spec, stage, planned=engine._planned(batch))]
        params = {
            "stages": " → ".join(s.key for s in unit),
            "index": batch.index,
            "n": crashes,
            "records": engine.batch_record_ids(spec, stage, batch),
        }
        reason = reason_render("batch_crashed", params)
        StageRun.objects.filter(pk=stage.stage_run_id).exclude(status__in=StageRunStatus.terminal()).update(
            status=StageRunStatus.CRASHED, status_reason=reason, last_error=reason, finished_at=now
        )
        if TaskRun.objects.filter(pk=spec.run_id, status__in=engine.ACTIVE_RUN).update(
            status=RunStatus.CRASHED,
            status_reason=reason,
            status_code="batch_crashed",
            status_params=params,
            finished_at=now,
        ):
            run_event_record(run_id=spec.run_id, kind=RunEventKind.FAILED, now=now)
    return []


def reap(*, now=None, limit: int = 500) -> dict:
    """One reaper pass (idempotent; duplicate beats are harmless); returns counts of what it did."""
    now = now or timezone.now()
    budget = int(engine.engine_setting("engine_crash_budget"))
    resend_after = float(engine.engine_setting("engine_resend_after_seconds"))
    counts = {"expired": 0, "resent": 0, "woken": 0, "finalised": 0, "versions_cleared": 0}
    # 1. Expired leases: the worker died (SIGKILL, OOM, machine gone) or hung past its lease.
    expired = list(
        Batch.objects.select_related("stage_run")
        .filter(status=BatchStatus.RUNNING, lease_expires_at__lt=now)
        .order_by("lease_expires_at")[:limit]
    )
    for batch in expired:
        if _crash_batch(batch, now, budget) is not None:
            counts["expired"] += 1
    # 2. Waiting batches whose wait is over go back to the queue.
    waiting = list(
        Batch.objects.select_related("stage_run")
        .filter(status=BatchStatus.WAITING, not_before__lte=now, stage_run__run__status__in=engine.ACTIVE_RUN)
        .order_by("not_before")[:limit]
    )
    for batch in waiting:
        with transaction.atomic():
            if Batch.objects.filter(pk=batch.pk, status=BatchStatus.WAITING, attempt=batch.attempt).update(
                status=BatchStatus.QUEUED, queued_at=now, not_before=None
            ):
                spec = engine.run_spec(batch.stage_run.run_id)
                stage = spec.stages[batch.stage_run.position]
                # The stage (and the run) stay waiting while the woken batch re-checks: it is running
                # again only once one of its batches commits (engine: stage counters). Flipping here made
                # a run that waits for hours blink Waiting/Running at every re-check.
                engine.dispatch_on_commit([(str(batch.pk), stage.queue, stage.is_global)])
                counts["woken"] += 1
    # A waiting run none of whose stages waits any more (a batch committed) is running again.
    for run_id in TaskRun.objects.filter(status=RunStatus.WAITING).values_list("pk", flat=True)[:limit]:
        if not StageRun.objects.filter(run_id=run_id, status=StageRunStatus.WAITING).exists():
            TaskRun.objects.filter(pk=run_id, status=RunStatus.WAITING).update(
                status=RunStatus.RUNNING, status_code="", status_params={}, status_reason=""
            )
    # 3. Queued but never picked up (message lost): ring again; a duplicate is harmless (claim step).
    lost = list(
        Batch.objects.select_related("stage_run")
        .filter(
            status=BatchStatus.QUEUED,
            queued_at__lt=now - timedelta(seconds=resend_after),
            stage_run__run__status__in=engine.ACTIVE_RUN,
        )
        .order_by("queued_at")[:limit]
    )
    items = []
    for batch in lost:
        if Batch.objects.filter(pk=batch.pk, status=BatchStatus.QUEUED, queued_at=batch.queued_at).update(
            queued_at=now
        ):
            spec = engine.run_spec(batch.stage_run.run_id)
            stage = spec.stages[batch.stage_run.position]
            items.append((str(batch.pk), stage.queue, stage.is_global))
    engine.dispatch(items)
    counts["resent"] = len(items)
    # 4. Runs stuck in a non-final state: cancelling with nothing in flight, complete but not marked.
    for run_id in TaskRun.objects.filter(status=RunStatus.CANCELLING).values_list("pk", flat=True)[:limit]:
        with transaction.atomic():
            if engine._run_cancel_finalize(run_id):
                counts["finalised"] += 1
    for run_id in TaskRun.objects.filter(status__in=engine.ACTIVE_RUN).values_list("pk", flat=True)[:limit]:
        with transaction.atomic():
            engine.dispatch_on_commit(engine.run_advance(run_id))
            if TaskRun.objects.filter(pk=run_id, status=RunStatus.SUCCEEDED).exists():
                counts["finalised"] += 1
    # 5. Versions a dead publish attempt left BUILDING (its run stopped; an active run's next attempt takes
    # the row over itself): their temp files and unowned final file go, the row becomes FAILED.
    from .publish import publish_debris_reap

    counts["versions_cleared"] = publish_debris_reap(now=now, limit=limit)
    return counts
