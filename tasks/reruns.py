"""Targeted re-runs: a new run of a finished run's task that starts at a chosen stage, either on the
finished run's checkpointed outputs (re-run from a stage) or on the records it quarantined there
(reprocess the quarantined records). Docs: docs/reruns.md.

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

import uuid

from django.db import transaction
from django.db.models import Count, F, Max
from django.utils import timezone
from django.utils.translation import gettext as _

from dataflare_portal.core.models import AuditAction
from dataflare_portal.core.services import audit_record
from pipelines.models import PipelineTemplate

from . import engine, workspace
from .choices import BatchStatus, RunEventKind, RunStatus, StageRunStatus
from .events import run_event_record
from .models import Batch, QuarantinedRecord, StageRun, TaskRun
from .retention import workspace_claim, workspace_pruned_message
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
    owners = _owners(missing)
    pruned = TaskRun.objects.filter(pk__in=owners).exclude(workspace_pruned_at=None).first() if owners else None
    if pruned is not None:
        raise RunRefused({"run": [workspace_pruned_message(pruned)]}, code="workspace_pruned")
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


def _owners(refs) -> set[str]:
    """The runs whose workspace folders these references are in (runs/<run>/...)."""
    owners = set()
    for ref in refs:
        parts = str(ref).split("/")
        if len(parts) > 2 and parts[0] == "runs":
            try:
                owners.add(str(uuid.UUID(parts[1])))
            except ValueError:
                continue
    return owners


def _prepare(run: TaskRun, stage: str) -> tuple[TaskRun, dict, int]:
    """The checks every re-run makes: the run finished, the stage is in the pipeline (not the first), and
    the stages before it are unchanged since the run. Returns the run, the new snapshot and the position."""
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
    before = (run.pipeline_snapshot or {}).get("pipeline") or {}
    # A run of another template version is re-run with that version's stages, over the same slice.
    template = None
    if before.get("stages_from_template"):
        template = PipelineTemplate.objects.filter(pk=before["stages_from_template"]).first()
        if template is None:
            raise RunRefused(
                {"run": [_("The template version run %(run)s executed was deleted.") % {"run": run}]},
                code="checkpoint_stale",
            )
    snapshot = _snapshot(
        pipeline,
        input_dataset,
        run.parameters or {},
        run.input_version,
        template=template,
        input_range=before.get("input_range"),
    )
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
    qc = [s["key"] for s in stages[:position] if s["kind"] == "qc"]
    if qc:
        # The lot and its reviewers' decisions belong to the finished run; the new run's publish would wait
        # for a lot of its own that nothing creates.
        raise RunRefused(
            {
                "stage": [
                    _(
                        "Stage %(qc)s (QC) comes before %(stage)s: its lot and review decisions belong to run "
                        "%(run)s. Re-run from %(qc)s or earlier."
                    )
                    % {"qc": qc[-1], "stage": stage, "run": run}
                ]
            },
            code="qc_before",
        )
    return run, snapshot, position


def run_rerun_from_stage(*, run: TaskRun, stage: str, actor) -> TaskRun:
    """Start a new run of `run`'s task at `stage`, reusing the finished run's checkpointed outputs before it.

    The new run takes the pipeline as it is now with the finished run's input and parameters; the stages
    before `stage` must be unchanged since the finished run (their output is what it checkpointed).
    """
    run, snapshot, position = _prepare(run, stage)
    if run.workspace_pruned_at is not None:
        raise RunRefused({"run": [workspace_pruned_message(run)]}, code="workspace_pruned")
    stages = snapshot["stages"]
    keys = [s["key"] for s in stages]
    inputs = _checkpointed_inputs(run, position, stages)
    if stages[position]["group"] == "global":
        # Its partitions would read keys the first run's units emitted into that run's workspace: one unit.
        stages[position]["partitions"] = 0
    source_stages = {s.position: s for s in StageRun.objects.filter(run=run, position__lt=position)}
    copied_batches = list(
        Batch.objects.filter(
            stage_run__run=run, stage_run__position__lt=position, status=BatchStatus.SUCCEEDED
        ).select_related("stage_run")
    )
    # The files the new run reads stay where they are: in this run's workspace, or in the one a re-run it
    # reused from read them from. Those runs are locked while the new run is created (tasks/retention.py).
    reads = {str(run.pk)} | _owners([b.output_ref for b in copied_batches if b.output_ref])
    reads |= _owners([ref.get("path") for _i, ref in inputs if ref.get("path")])
    return _run_create_at(
        reads_from=reads,
        run=run,
        snapshot=snapshot,
        position=position,
        inputs=inputs,
        earlier={i: source_stages[i] for i in range(position)},
        earlier_batches=[(b.stage_run.position, b, {"reused_from": str(b.pk)}) for b in copied_batches],
        trigger={"kind": "rerun", "run": str(run.pk), "run_number": run.number, "from_stage": stage},
        reason=_("Reused from run %(run)s.") % {"run": run},
        actor=actor,
        audit_after={"rerun_of": str(run.pk), "from_stage": stage, "reused_stages": keys[:position]},
        message=lambda new: (
            _("Re-ran run %(run)s from stage %(stage)s as %(new)s.") % {"run": run, "stage": stage, "new": new}
        ),
    )


def _run_create_at(
    *,
    run: TaskRun,
    snapshot: dict,
    position: int,
    inputs: list[tuple[int, dict]],
    earlier: dict[int, StageRun | None],
    earlier_batches: list[tuple[int, Batch, dict]],
    trigger: dict,
    reason: str,
    actor,
    audit_after: dict,
    message,
    run_id=None,
    records_in: int | None = None,
    reads_from: set[str] | None = None,
) -> TaskRun:
    """Create a new run of `run`'s task whose stages before `position` are done (copied from `earlier`, or
    empty when None) and whose stage `position` is queued on `inputs`; ring its doorbell on commit."""
    pipeline = run.pipeline
    stages = snapshot["stages"]
    now = timezone.now()
    with transaction.atomic():
        # First, under lock: the workspaces it reads are still there (a pruning racing this start waits, then
        # sees the new run as one that needs them).
        workspace_claim(reads_from or ())
        number = (TaskRun.objects.filter(task=run.task).aggregate(n=Max("number"))["n"] or 0) + 1
        copied = [earlier[i] for i in range(position) if earlier.get(i) is not None]
        new = TaskRun(
            **({"pk": run_id} if run_id else {}),
            task=run.task,
            number=number,
            project=run.project,
            pipeline=pipeline,
            template=run.template if snapshot["pipeline"].get("stages_from_template") else pipeline.template,
            status=RunStatus.RUNNING,
            pipeline_snapshot=snapshot,
            parameters=run.parameters,
            input_version=run.input_version,
            trigger=trigger,
            rerun_of=run,
            records_in=(
                records_in
                if records_in is not None
                else copied[0].records_out
                if copied and copied[0].position == 0
                else 0
            ),
            records_filtered=sum(s.records_filtered for s in copied),
            records_failed=sum(s.records_failed for s in copied),
            started_at=now,
            created_by=_user(actor),
        )
        new.full_clean(exclude=["idempotency_key"])
        new.save()
        rows = []
        for s in stages:
            pos = s["position"]
            src = earlier.get(pos)
            before = pos < position
            rows.append(
                StageRun(
                    run=new,
                    stage_id=s["stage_id"],
                    position=pos,
                    key=s["key"],
                    kind=s["kind"],
                    config=s["config"],
                    queue=s["queue"],
                    status=(
                        StageRunStatus.SUCCEEDED
                        if before
                        else StageRunStatus.RUNNING
                        if pos == position
                        else StageRunStatus.PENDING
                    ),
                    status_reason=reason if before else "",
                    total_batches=(src.total_batches if src else 0)
                    if before
                    else len(inputs)
                    if pos == position
                    else None,
                    batches_done=(src.batches_done if src else 0) if before else 0,
                    records_in=src.records_in if src else 0,
                    records_out=src.records_out if src else 0,
                    records_filtered=src.records_filtered if src else 0,
                    records_failed=src.records_failed if src else 0,
                    result=src.result if src else {},
                    started_at=(src.started_at if src else now) if before else now if pos == position else None,
                    finished_at=(src.finished_at if src else now) if before else None,
                )
            )
        stage_runs = StageRun.objects.bulk_create(rows)
        by_position = {sr.position: sr for sr in stage_runs}
        Batch.objects.bulk_create(
            [
                Batch(
                    stage_run=by_position[pos],
                    index=b.index,
                    status=BatchStatus.SUCCEEDED,
                    attempt=b.canonical_attempt or b.attempt,
                    canonical_attempt=b.canonical_attempt or b.attempt,
                    input_ref=input_ref,
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
                for pos, b, input_ref in earlier_batches
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
        audit_record(actor=actor, action=AuditAction.RUN, instance=new, after=audit_after, message=message(new))
        run_event_record(run_id=new.pk, kind=RunEventKind.STARTED, now=now)
        group = stages[position]["group"] == "global"
        to_send = [(str(b.pk), first.queue, group) for b in queued]
        if not queued:
            to_send = engine.run_advance(new.pk)  # empty input: the stage (and what follows) completes now
        engine.dispatch_on_commit(to_send)
    new.refresh_from_db()
    return new


# ---- Quarantined records ----------------------------------------------------------------------
def _quarantined(run: TaskRun):
    """The run's quarantined records that count: those of each batch's committed (canonical) attempt."""
    return QuarantinedRecord.objects.filter(stage_run__run=run, attempt=F("batch__canonical_attempt"))


def run_reprocess_quarantined(*, run: TaskRun, actor, stage: str | None = None) -> TaskRun:
    """Start a new run of `run`'s task on the records it quarantined at one stage, from that stage on.

    The stages before it are not run (the records are what entered the stage); the new run publishes
    the records that now pass, as a new version. `stage` is needed only when records were quarantined at
    more than one stage.
    """
    run = TaskRun.objects.select_related("task", "pipeline", "input_version").get(pk=run.pk)
    if run.status not in RunStatus.terminal():
        _prepare(run, stage or "")  # refuses: the run has not finished
    counts = dict(_quarantined(run).values("stage_run__key").annotate(n=Count("pk")).values_list("stage_run__key", "n"))
    if not counts:
        raise RunRefused(
            {"run": [_("Run %(run)s has no quarantined records.") % {"run": run}]}, code="nothing_quarantined"
        )
    listed = ", ".join(f"{k} ({n})" for k, n in sorted(counts.items()))
    if stage is None and len(counts) > 1:
        raise RunRefused(
            {"stage": [_("Records were quarantined at several stages: %(stages)s; choose one.") % {"stages": listed}]},
            code="stage_required",
        )
    if stage is None and counts:
        stage = next(iter(counts))
    run, snapshot, position = _prepare(run, stage or "")
    if stage not in counts:
        raise RunRefused(
            {
                "stage": [
                    _("Run %(run)s quarantined no record at stage %(stage)s (it did at: %(stages)s).")
                    % {"run": run, "stage": stage, "stages": listed}
                ]
            },
            code="nothing_quarantined",
        )
    stages = snapshot["stages"]
    rows = list(
        _quarantined(run)
        .filter(stage_run__key=stage)
        .order_by("batch__index", "record_index")
        .values_list("record", flat=True)
    )
    records = [r for r in rows if r is not None]
    if not records:
        raise RunRefused(
            {"stage": [_("The records quarantined at stage %(stage)s were not kept.") % {"stage": stage}]},
            code="nothing_quarantined",
        )
    if stages[position]["group"] == "global":
        stages[position]["partitions"] = 0
    run_id = uuid.uuid4()
    size = int(snapshot["pipeline"]["batch_size"])
    chunks = [records[i : i + size] for i in range(0, len(records), size)]
    # The records become the output of the stage before: the chosen stage reads them as its checkpointed input.
    made, refs = [], []
    for index, chunk in enumerate(chunks):
        path = workspace.batch_path(run_id, position - 1, index, 1)
        workspace.write_jsonl(path, chunk)
        ref = workspace.relative(path)
        refs.append((index, ref, len(chunk)))
        made.append(
            (
                position - 1,
                Batch(output_ref=ref, attempt=1, canonical_attempt=1, records_in=len(chunk), records_out=len(chunk)),
                {"quarantined_from": str(run.pk)},
            )
        )
        made[-1][1].index = index
    now = timezone.now()
    before = StageRun(
        position=position - 1,
        total_batches=len(chunks),
        batches_done=len(chunks),
        records_out=len(records),
        started_at=now,
        finished_at=now,
    )
    if stages[position]["group"] == "global":
        inputs = [(0, {"from": position - 1})]
    else:
        inputs = [(index, {"path": ref, "records": n}) for index, ref, n in refs]
    return _run_create_at(
        run=run,
        run_id=run_id,
        records_in=len(records),
        snapshot=snapshot,
        position=position,
        inputs=inputs,
        earlier={**dict.fromkeys(range(position - 1)), position - 1: before},
        earlier_batches=made,
        trigger={
            "kind": "quarantine",
            "run": str(run.pk),
            "run_number": run.number,
            "stage": stage,
            "records": len(records),
        },
        reason=_("Not run: reprocessing the records run %(run)s quarantined at %(stage)s.")
        % {"run": run, "stage": stage},
        actor=actor,
        audit_after={"reprocess_of": str(run.pk), "stage": stage, "records": len(records)},
        message=lambda new: (
            _("Reprocessing %(n)d record(s) run %(run)s quarantined at stage %(stage)s as %(new)s.")
            % {"n": len(records), "run": run, "stage": stage, "new": new}
        ),
    )
