"""Targeted re-runs: a new run of a finished run's task that starts at a chosen stage.

The stages before the chosen one are not executed again: the new run's rows for them are copies of the
finished run's (succeeded, with their counters), and the chosen stage reads the canonical outputs the
finished run checkpointed in the workspace (the files its batches committed, `Batch.output_ref`), exactly
as it read them in the first run. Those files stay where the first run wrote them; the re-run refuses to
start when one of them is gone.

A stage's output is a checkpoint only when it was written: per-record stages that ran fused into one
worker step (engine.fusable_followers) keep their intermediate records in memory, so a re-run can start
at the first stage after such a chain, not inside it. The error says which stage to choose instead.
"""

from __future__ import annotations

from django.db import transaction
from django.db.models import Max
from django.utils import timezone
from django.utils.translation import gettext as _

from dataflare_portal.core.models import AuditAction
from dataflare_portal.core.services import audit_record

from . import engine, workspace
from .choices import BatchStatus, RunEventKind, RunStatus, StageRunStatus
from .events import run_event_record
from .models import Batch, StageRun, TaskRun
from .services import RunRefused, _snapshot, _user

# The stage's identity for "is the checkpoint still valid": what it is and how it is configured.
_SAME = ("key", "kind", "config", "group")


def _stage_names(stages: list[dict]) -> str:
    return ", ".join(s["key"] for s in stages)


def _checkpointed_inputs(run: TaskRun, position: int, stages: list[dict]) -> list[tuple[int, dict]]:
    """The chosen stage's inputs from the finished run: (index, input_ref) per batch, or RunRefused."""
    before = stages[position - 1]
    previous = StageRun.objects.filter(run=run, position=position - 1).first()
    if previous is None or previous.status != StageRunStatus.SUCCEEDED:
        state = previous.get_status_display() if previous is not None else _("never started")
        raise RunRefused(
            {
                "stage": [
                    _(
                        "Nothing checkpointed: stage %(stage)s of run %(run)s did not finish (%(state)s), so there "
                        "is no output to start %(next)s from."
                    )
                    % {"stage": before["key"], "run": run, "state": state, "next": stages[position]["key"]}
                ]
            },
            code="nothing_checkpointed",
        )
    if stages[position]["group"] == "global":
        # A global stage reads the complete output of the stage before it (engine.stage_output_refs).
        refs = engine.stage_output_refs(previous.pk)
        inputs = [(0, {"from": position - 1})]
    else:
        rows = list(
            Batch.objects.filter(stage_run__run=run, stage_run__position=position)
            .order_by("index")
            .values_list("index", "input_ref")
        )
        fused = [i for i, ref in rows if "path" not in (ref or {})]
        if fused:
            raise RunRefused(
                {
                    "stage": [
                        _(
                            "Nothing checkpointed before stage %(stage)s: in run %(run)s it ran in one step with "
                            "the stages before it (their records stayed in memory). Re-run from the first stage "
                            "of that chain, or from a stage after a global stage or a model stage."
                        )
                        % {"stage": stages[position]["key"], "run": run}
                    ]
                },
                code="nothing_checkpointed",
            )
        refs = [ref["path"] for _i, ref in rows]
        inputs = [(i, {k: v for k, v in ref.items() if k in ("path", "records")}) for i, ref in rows]
    missing = [ref for ref in refs if not workspace.resolve(ref).exists()]
    if missing:
        raise RunRefused(
            {
                "stage": [
                    _(
                        "Nothing checkpointed: %(n)d output file(s) of stage %(stage)s of run %(run)s are gone "
                        "from the workspace (first: %(path)s)."
                    )
                    % {"n": len(missing), "stage": before["key"], "run": run, "path": missing[0]}
                ]
            },
            code="nothing_checkpointed",
        )
    return inputs


def run_rerun_from_stage(*, run: TaskRun, stage: str, actor) -> TaskRun:
    """Start a new run of `run`'s task at `stage`, reusing the finished run's checkpointed outputs before it.

    The new run takes the pipeline as it is now with the finished run's input and parameters; the stages
    before `stage` must be unchanged since the finished run (their output is what it checkpointed).
    """
    run = TaskRun.objects.select_related("task", "pipeline", "input_version").get(pk=run.pk)
    if run.status not in RunStatus.terminal():
        raise RunRefused(
            {
                "run": [
                    _("Run %(run)s has not finished (it is %(status)s); re-run it once it has stopped.")
                    % {"run": run, "status": run.get_status_display()}
                ]
            },
            code="run_active",
        )
    pipeline = run.pipeline
    input_dataset = run.task.input_dataset if run.input_version is None else run.input_version.dataset
    input_dataset = input_dataset or pipeline.input_dataset
    snapshot = _snapshot(pipeline, input_dataset, run.parameters or {}, run.input_version)
    stages = snapshot["stages"]
    keys = [s["key"] for s in stages]
    if stage not in keys:
        raise RunRefused(
            {
                "stage": [
                    _("Stage %(stage)s is not in pipeline %(pipeline)s (its stages: %(stages)s).")
                    % {"stage": stage, "pipeline": pipeline, "stages": _stage_names(stages)}
                ]
            },
            code="unknown_stage",
        )
    position = keys.index(stage)
    if position == 0:
        raise RunRefused(
            {"stage": [_("Stage %(stage)s is the first stage: start a new run instead.") % {"stage": stage}]},
            code="first_stage",
        )
    old = run.pipeline_snapshot.get("stages") or []
    for i in range(position):
        same = i < len(old) and all(old[i].get(f) == stages[i].get(f) for f in _SAME)
        if not same:
            raise RunRefused(
                {
                    "stage": [
                        _(
                            "Stage %(changed)s changed since run %(run)s (or the stages moved), so its checkpoint "
                            "does not match the pipeline any more; re-run from %(changed)s or earlier."
                        )
                        % {"changed": stages[i]["key"], "run": run}
                    ]
                },
                code="checkpoint_stale",
            )
    inputs = _checkpointed_inputs(run, position, stages)
    if stages[position]["group"] == "global":
        # Its partitions would read keys the first run's units emitted into that run's workspace: one unit.
        stages[position]["partitions"] = 0
    now = timezone.now()
    source_stages = {s.position: s for s in StageRun.objects.filter(run=run, position__lt=position)}
    with transaction.atomic():
        number = (TaskRun.objects.filter(task=run.task).aggregate(n=Max("number"))["n"] or 0) + 1
        copied = [source_stages[i] for i in range(position)]
        new = TaskRun(
            task=run.task,
            number=number,
            project=run.project,
            pipeline=pipeline,
            template=pipeline.template,
            status=RunStatus.RUNNING,
            pipeline_snapshot=snapshot,
            parameters=run.parameters,
            input_version=run.input_version,
            trigger={"kind": "rerun", "run": str(run.pk), "run_number": run.number, "from_stage": stage},
            records_in=copied[0].records_out,
            records_filtered=sum(s.records_filtered for s in copied),
            records_failed=sum(s.records_failed for s in copied),
            started_at=now,
            created_by=_user(actor),
        )
        new.full_clean(exclude=["idempotency_key"])
        new.save()
        rows = []
        for s in stages:
            src = source_stages.get(s["position"])
            reused = src is not None
            rows.append(
                StageRun(
                    run=new,
                    stage_id=s["stage_id"],
                    position=s["position"],
                    key=s["key"],
                    kind=s["kind"],
                    config=s["config"],
                    queue=s["queue"],
                    status=(
                        StageRunStatus.SUCCEEDED
                        if reused
                        else StageRunStatus.RUNNING
                        if s["position"] == position
                        else StageRunStatus.PENDING
                    ),
                    status_reason=_("Reused from run %(run)s.") % {"run": run} if reused else "",
                    total_batches=src.total_batches if reused else len(inputs) if s["position"] == position else None,
                    batches_done=src.batches_done if reused else 0,
                    records_in=src.records_in if reused else 0,
                    records_out=src.records_out if reused else 0,
                    records_filtered=src.records_filtered if reused else 0,
                    records_failed=src.records_failed if reused else 0,
                    result=src.result if reused else {},
                    started_at=(src.started_at if reused else now if s["position"] == position else None),
                    finished_at=src.finished_at if reused else None,
                )
            )
        stage_runs = StageRun.objects.bulk_create(rows)
        by_position = {sr.position: sr for sr in stage_runs}
        # The reused stages' canonical batches, pointing at the files the first run committed.
        Batch.objects.bulk_create(
            [
                Batch(
                    stage_run=by_position[b.stage_run.position],
                    index=b.index,
                    status=BatchStatus.SUCCEEDED,
                    attempt=b.canonical_attempt or b.attempt,
                    canonical_attempt=b.canonical_attempt or b.attempt,
                    input_ref={"reused_from": str(b.pk)},
                    output_ref=b.output_ref,
                    checkpoint=b.checkpoint,
                    records_in=b.records_in,
                    records_out=b.records_out,
                    records_filtered=b.records_filtered,
                    records_failed=b.records_failed,
                    duration_ms=0,
                    started_at=now,
                    finished_at=now,
                )
                for b in Batch.objects.filter(
                    stage_run__run=run, stage_run__position__lt=position, status=BatchStatus.SUCCEEDED
                ).select_related("stage_run")
            ],
            batch_size=1000,
        )
        first = by_position[position]
        queued = Batch.objects.bulk_create(
            [
                Batch(stage_run=first, index=i, status=BatchStatus.QUEUED, input_ref=ref, queued_at=now)
                for i, ref in inputs
            ],
            batch_size=1000,
        )
        audit_record(
            actor=actor,
            action=AuditAction.RUN,
            instance=new,
            after={"rerun_of": str(run.pk), "from_stage": stage, "reused_stages": keys[:position]},
            message=_("Re-ran run %(run)s from stage %(stage)s as %(new)s.") % {"run": run, "stage": stage, "new": new},
        )
        run_event_record(run_id=new.pk, kind=RunEventKind.STARTED, now=now)
        group = stages[position]["group"] == "global"
        to_send = [(str(b.pk), first.queue, group) for b in queued]
        if not queued:
            to_send = engine.run_advance(new.pk)  # empty input: the stage (and what follows) completes now
        engine.dispatch_on_commit(to_send)
    new.refresh_from_db()
    return new
