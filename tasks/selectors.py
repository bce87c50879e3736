"""Reads of the engine's state: run progress (per stage), workers with their leases, queue depths."""

from __future__ import annotations

import math
from datetime import timedelta

from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _

from catalog.models import Dataset
from dataflare_portal.core.admin_base import badge_class
from dataflare_portal.core.duties import duties_status
from pipelines.models import PipelineTemplate
from pipelines.stagekinds.registry import registry as stage_kinds

from .choices import BatchStatus, RunStatus
from .models import Batch, QCLot, StageRun, TaskRun, WorkerHeartbeat
from .qc import run_qc_lot
from .reasons import run_reason

QUEUES = ("stages", "inference", "default")


# A rate over less than this much wall-clock time says nothing: a stage whose batches all commit in one
# transaction (fused followers) has started_at == finished_at, and 400 records over "1 ms" read 400,000/s.
RATE_MIN_SECONDS = 1.0


def _rate(records: int, started, finished, now) -> float | None:
    """Records per second over the wall-clock span, or None when the span is too short to measure."""
    if not started or not records:
        return 0.0
    seconds = ((finished or now) - started).total_seconds()
    if seconds < RATE_MIN_SECONDS:
        return None
    return round(records / seconds, 1)


def run_progress(run: TaskRun, *, now=None) -> dict:
    """Per-stage records in/out/filtered/failed, batches, percent, records/s, ETA and last error."""
    now = now or timezone.now()
    stages = list(StageRun.objects.filter(run=run).order_by("position"))
    row_count = None
    if run.task_id:
        ds_id = (run.pipeline_snapshot.get("pipeline") or {}).get("input_dataset_id")
        if ds_id:
            row_count = Dataset.objects.filter(pk=ds_id).values_list("row_count", flat=True).first()
    batch_size = int((run.pipeline_snapshot.get("pipeline") or {}).get("batch_size") or 1000)
    in_flight = dict.fromkeys([s.pk for s in stages], 0)
    for sr_id in Batch.objects.filter(stage_run__run=run, status=BatchStatus.RUNNING).values_list(
        "stage_run_id", flat=True
    ):
        in_flight[sr_id] = in_flight.get(sr_id, 0) + 1
    out = []
    groups = {st["position"]: st.get("group") for st in run.pipeline_snapshot.get("stages") or []}
    expected_batches = math.ceil(row_count / batch_size) + 1 if row_count is not None else None
    for s in stages:
        total = s.total_batches
        if total is None and expected_batches is not None and groups.get(s.position) != "global":
            total_est = expected_batches if s.position == 0 else max(expected_batches - 1, 0)
        else:
            total_est = total
        if s.status == "succeeded":
            percent = 100.0
        elif total_est:
            percent = min(99.9, 100.0 * s.batches_done / total_est)
        else:
            percent = 0.0
        rate = _rate(s.records_in, s.started_at, s.finished_at, now)
        eta = None
        if s.status in ("running", "pending", "waiting") and total_est and s.batches_done and s.started_at:
            per_batch = max((now - s.started_at).total_seconds(), 1e-3) / s.batches_done
            eta = max(0.0, (total_est - s.batches_done) * per_batch)
        out.append(
            {
                "id": str(s.pk),
                "position": s.position,
                "key": s.key,
                "kind": s.kind,
                "kind_label": stage_kinds.label_of(s.kind),
                "status": s.status,
                "status_label": s.get_status_display(),
                "badge": badge_class(s.status),
                "status_reason": s.status_reason,
                "batches_done": s.batches_done,
                "batches_total": total,
                "batches_running": in_flight.get(s.pk, 0),
                "records_in": s.records_in,
                "records_out": s.records_out,
                "records_filtered": s.records_filtered,
                "records_failed": s.records_failed,
                "percent": round(percent, 1),
                "records_per_second": rate,
                "eta_seconds": round(eta, 1) if eta is not None else None,
                "last_error": s.last_error,
                "result": s.result,
            }
        )
    return {
        "id": str(run.pk),
        "status": run.status,
        "status_label": run.get_status_display(),
        "badge": badge_class(run.status),
        "status_reason": run_reason(run),
        "status_code": run.status_code,
        "active": run.status in RunStatus.active(),
        "records_in": run.records_in,
        "records_out": run.records_out,
        "records_filtered": run.records_filtered,
        "records_failed": run.records_failed,
        "prompt_tokens": run.prompt_tokens,
        "completion_tokens": run.completion_tokens,
        "retry_tokens": run.retry_tokens,
        "records_per_second": _rate(run.records_in, run.started_at, run.finished_at, now),
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "stages": out,
    }


# ---- workers and queues -----------------------------------------------------------------------
def queue_depths() -> dict[str, int | None]:
    """Messages waiting per queue, asked of the broker; None (shown as "unknown") when it cannot say."""
    from dataflare_portal.celery import app

    depths: dict[str, int | None] = dict.fromkeys(QUEUES)
    try:
        with app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            channel = conn.default_channel
            for name in QUEUES:
                try:
                    depths[name] = int(channel._size(name))
                except Exception:
                    depths[name] = None
    except Exception:
        import logging

        logging.getLogger(__name__).warning("queue depths unavailable: the broker did not answer", exc_info=True)
    return depths


def workers_overview(*, now=None) -> dict:
    """Workers from their heartbeats (alive, or dead after 3 silent intervals) with the leases they hold."""
    from .engine import engine_setting

    now = now or timezone.now()
    interval = float(engine_setting("worker_heartbeat_seconds"))
    dead_after = timedelta(seconds=3 * interval)
    workers = []
    names = {}
    for hb in WorkerHeartbeat.objects.order_by("name")[:200]:
        alive = hb.last_seen_at >= now - dead_after
        item = {
            "name": hb.name,
            "hostname": hb.hostname,
            "pid": hb.pid,
            "queues": hb.queues,
            "started_at": hb.started_at,
            "last_seen_at": hb.last_seen_at,
            "seconds_since_seen": round((now - hb.last_seen_at).total_seconds(), 1),
            "alive": alive,
            "batches_done": hb.batches_done,
            "leases": [],
        }
        workers.append(item)
        names[hb.name] = item
    orphaned = []
    running = (
        Batch.objects.filter(status=BatchStatus.RUNNING).select_related("stage_run").order_by("lease_expires_at")[:500]
    )
    for b in running:
        lease = {
            "batch": str(b.pk),
            "run": str(b.stage_run.run_id),
            "stage": b.stage_run.key,
            "index": b.index,
            "attempt": b.attempt,
            "owner": b.lease_owner,
            "lease_expires_at": b.lease_expires_at,
            "expired": bool(b.lease_expires_at and b.lease_expires_at < now),
            "url": reverse("tasks:run-detail", args=[b.stage_run.run_id]),
        }
        worker_name = b.lease_owner.rsplit(":", 1)[0]
        worker = names.get(worker_name)
        if worker is not None:
            worker["leases"].append(lease)
        if worker is None or not worker["alive"] or lease["expired"]:
            orphaned.append(lease)
    return {
        "workers": workers,
        "alive": sum(1 for w in workers if w["alive"]),
        "dead": sum(1 for w in workers if not w["alive"]),
        "orphaned": orphaned,
        "queues": queue_depths(),
        "dead_after_seconds": 3 * interval,
        # Beat's heartbeat and its duties (reaper, rollups, alerts): a dead scheduler shows here too.
        "liveness": duties_status(now=now),
    }


def workers_status_check() -> dict:
    """/readyz component `workers`: live workers from their heartbeats (degraded when none is alive)."""
    from .engine import engine_setting

    since = timezone.now() - timedelta(seconds=3 * float(engine_setting("worker_heartbeat_seconds")))
    seen = list(WorkerHeartbeat.objects.values_list("last_seen_at", flat=True)[:200])
    alive = sum(1 for at in seen if at >= since)
    detail = _("%(alive)s alive, %(dead)s dead") % {"alive": alive, "dead": len(seen) - alive}
    return {"ok": alive > 0, "detail": detail, "alive": alive, "dead": len(seen) - alive}


# ---- overview panel ---------------------------------------------------------------------------
def overview_panel(request) -> dict:
    """Admin index panel: active runs with progress, and recent failures."""
    from django.utils.html import format_html

    from dataflare_portal.core.admin_base import status_badge

    rows = []
    active = (
        TaskRun.objects.filter(status__in=RunStatus.active()).select_related("pipeline").order_by("-created_at")[:10]
    )
    for run in active:
        p = run_progress(run)
        done = [s["percent"] for s in p["stages"]]
        percent = sum(done) / len(done) if done else 0
        rows.append(
            [
                format_html('<a href="{}">{}</a>', reverse("tasks:run-detail", args=[run.pk]), run),
                status_badge(run.status, run.get_status_display()),
                f"{percent:.0f}%",
                f"{p['records_in']:,} → {p['records_out']:,}",
            ]
        )
    since = timezone.now() - timedelta(days=1)
    failed = TaskRun.objects.filter(status__in=[RunStatus.FAILED, RunStatus.CRASHED], finished_at__gte=since).order_by(
        "-finished_at"
    )[:5]
    for run in failed:
        rows.append(
            [
                format_html('<a href="{}">{}</a>', reverse("tasks:run-detail", args=[run.pk]), run),
                status_badge(run.status, run.get_status_display()),
                "—",
                run_reason(run)[:120],
            ]
        )
    return {
        "template": "portal/_panel.html",
        "context": {
            "title": _("Active runs and recent failures"),
            "columns": [_("Run"), _("Status"), _("Progress"), _("Records / reason")],
            "rows": rows,
            "empty": _("No run is active and none failed in the last 24 hours."),
            "more_url": reverse("admin:tasks_taskrun_changelist"),
        },
    }


def active_runs_kpi(query) -> int:
    """Runs active now within the dashboard's project/pipeline filter (one indexed count)."""
    qs = TaskRun.objects.filter(status__in=RunStatus.active())
    if query.project_id:
        qs = qs.filter(project_id=query.project_id)
    if query.pipeline_id:
        qs = qs.filter(pipeline_id=query.pipeline_id)
    return qs.count()


def run_blocker(run: TaskRun) -> dict | None:
    """Why a run is not moving (waiting, paused, failed...) and the one action that unblocks it.

    Returns {"tone": "warn"|"bad", "reason": str, "action": {"label", "url", "method"} | None}, or None
    for a run that is simply running or done.
    """
    reason = run_reason(run)
    action = None
    tone = "warn"
    pipeline = run.pipeline
    project = run.project
    if run.status in (RunStatus.PENDING, RunStatus.WAITING):
        lot = run_qc_lot(run.pk)
        paused = next((scope for scope in (pipeline, project) if scope is not None and scope.runs_paused), None)
        if lot is not None and lot.decision == "pending":
            done = lot.items.exclude(decision="pending").count()
            reason = _(
                "This run waits for the review of QC lot %(lot)s (%(done)d of %(total)d sampled records decided)."
            ) % {"lot": lot.pk, "done": done, "total": lot.sample_size}
            action = {
                "label": _("Review lot %(lot)s") % {"lot": lot.pk},
                "url": reverse("admin:tasks_reviewitem_review") + f"?lot={lot.pk}",
                "method": "get",
            }
        elif lot is not None and lot.decision == "rejected":
            tone = "bad"
            reason = _("QC rejected lot %(lot)s, so the run will not publish. An admin may override the decision.") % {
                "lot": lot.pk
            }
            action = {
                "label": _("Open QC lot %(lot)s") % {"lot": lot.pk},
                "url": reverse("admin:tasks_qclot_change", args=[lot.pk]),
                "method": "get",
            }
        elif paused is not None:
            reason = _("New runs are paused: %(reason)s") % {"reason": paused.paused_reason or _("no reason given")}
            action = {"label": _("See alerts and lift the pause"), "url": reverse("alerts:inbox"), "method": "get"}
        elif run.status == RunStatus.WAITING:
            reason = reason or _("Waiting for an upstream stage or a worker to pick up the next batch.")
            action = {"label": _("See workers"), "url": reverse("tasks:workers"), "method": "get"}
        else:
            return None if not reason else {"tone": tone, "reason": reason, "action": None}
    elif run.status in (RunStatus.FAILED, RunStatus.CRASHED):
        tone = "bad"
        failed = StageRun.objects.filter(run=run, status__in=("failed", "crashed")).order_by("position").first()
        if failed is not None:
            detail = failed.status_reason or failed.last_error
            reason = reason or detail or _("Stage %(key)s failed.") % {"key": failed.key}
            if detail and detail not in reason:
                reason = f"{reason} ({failed.key}: {detail[:300]})"
            action = {
                "label": _("Retry stage %(key)s") % {"key": failed.key},
                "url": reverse("tasks:run-action", args=[run.pk, "retry"]),
                "method": "post",
                "stage_run": str(failed.pk),
            }
        else:
            reason = reason or _("The run stopped.")
            action = {
                "label": _("Resume from checkpoint"),
                "url": reverse("tasks:run-action", args=[run.pk, "resume"]),
                "method": "post",
            }
    elif run.status == RunStatus.CANCELLED:
        reason = reason or _("An operator cancelled this run.")
        action = {
            "label": _("Resume from checkpoint"),
            "url": reverse("tasks:run-action", args=[run.pk, "resume"]),
            "method": "post",
        }
    elif run.status == RunStatus.CANCELLING:
        reason = reason or _("Cancelling: workers stop after the batch in flight.")
    else:
        return None
    return {"tone": tone, "reason": reason, "action": action}


def version_lineage(version) -> dict:
    """A published version's lineage for people: run, template version number, inputs, QC decision, models."""
    run = None
    if version.run_id:
        run = TaskRun.objects.select_related("pipeline", "task").filter(pk=version.run_id).first()
    template = (
        PipelineTemplate.objects.filter(pk=version.template_version_id).first() if version.template_version_id else None
    )
    inputs = list(version.parents.select_related("dataset"))
    # The dataset the run read: the run's own snapshot says which (publish never wrote it into the
    # lineage, so the page said "—" for every version).
    snapshot = (run.pipeline_snapshot or {}).get("pipeline") or {} if run is not None else {}
    input_id = snapshot.get("input_dataset_id") or (run.pipeline.input_dataset_id if run is not None else None)
    input_datasets = list(Dataset.objects.filter(pk=input_id)) if input_id else []
    lot = None
    if run is not None:
        lot = QCLot.objects.filter(stage_run__run=run).select_related("policy").order_by("-created_at").first()
    return {
        "run": run,
        "template": template,
        "parents": inputs,
        "input_datasets": input_datasets,
        "lot": lot,
        "qc_decision": version.qc_decision or {},
        "model_versions": version.model_versions or [],
    }
