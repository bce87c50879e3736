"""Pages of the engine: run detail (live progress, actions), workers, published versions, in the admin shell."""

import json

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import content_disposition_header
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from catalog import services as catalog_services
from catalog.connectors import ConnectorError
from catalog.models import DatasetVersion
from dataflare_portal.core.auth import has_role, role_required
from dataflare_portal.core.services import ROLE_OPERATOR, ROLE_VIEWER
from pipelines.selectors import stage_diagram_nodes

from . import selectors, services
from .models import StageRun, TaskRun


def _can_operate(user) -> bool:
    return has_role(user, ROLE_OPERATOR)


@role_required(ROLE_VIEWER)
@require_GET
def run_detail(request, pk):
    run = get_object_or_404(TaskRun.objects.select_related("pipeline", "project", "task"), pk=pk)
    progress = selectors.run_progress(run)
    quarantine_url = reverse("admin:tasks_quarantinedrecord_changelist")
    counts = {}
    for stage in progress["stages"]:
        stage["quarantine_url"] = f"{quarantine_url}?stage_run__id__exact={stage['id']}"
        stage["batches_url"] = f"{reverse('admin:tasks_batch_changelist')}?stage_run__id__exact={stage['id']}"
        counts[stage["key"]] = {**stage, "url": stage["batches_url"]}
    stage_rows = StageRun.objects.filter(run=run).order_by("position")
    return render(
        request,
        "tasks/run_detail.html",
        {
            "title": _("Run %(run)s") % {"run": run},
            "run": run,
            "progress": progress,
            "progress_url": reverse("tasks:run-progress", args=[run.pk]),
            "can_operate": _can_operate(request.user),
            "failed_stages": [s for s in progress["stages"] if s["status"] in ("failed", "crashed")],
            "blocker": selectors.run_blocker(run),
            "diagram": stage_diagram_nodes(stage_rows, counts),
            "published": DatasetVersion.objects.filter(run_id=run.pk).first(),
        },
    )


@role_required(ROLE_VIEWER)
@require_GET
def run_progress_json(request, pk):
    run = get_object_or_404(TaskRun, pk=pk)
    return JsonResponse(selectors.run_progress(run))


@role_required(ROLE_OPERATOR)
@require_POST
def run_action(request, pk, action):
    run = get_object_or_404(TaskRun, pk=pk)
    if action == "cancel" and request.POST.get("confirm") != "yes":
        # Cancelling stops work in flight: ask first, on a page of its own (works without JavaScript).
        return render(
            request,
            "tasks/run_cancel_confirm.html",
            {"title": _("Cancel run %(run)s?") % {"run": run}, "run": run},
        )
    try:
        if action == "cancel":
            services.run_cancel(run=run, actor=request.user)
            messages.success(request, _("Cancelling the run."))
        elif action == "resume":
            services.run_resume(run=run, actor=request.user)
            messages.success(request, _("The run resumes from its last checkpoint."))
        elif action == "retry":
            stage_run = None
            if request.POST.get("stage_run"):
                stage_run = get_object_or_404(StageRun, pk=request.POST["stage_run"], run=run)
            services.run_retry(run=run, actor=request.user, stage_run=stage_run)
            messages.success(request, _("Failed batches are retried."))
        else:
            messages.error(request, _("Unknown action."))
    except ValidationError as exc:
        messages.error(request, "; ".join(exc.messages))
    return redirect("tasks:run-detail", pk=run.pk)


@role_required(ROLE_VIEWER)
@require_GET
def workers(request):
    view = selectors.workers_overview()
    return render(request, "tasks/workers.html", {"title": _("Workers"), **view})


PREVIEW_RECORDS = 20


@role_required(ROLE_VIEWER)
@require_GET
def version_detail(request, pk):
    """A published dataset version for people: lineage, formatted sizes, the first records, a download."""
    version = get_object_or_404(DatasetVersion.objects.select_related("dataset", "dataset__source"), pk=pk)
    preview_error = None
    records = []
    try:
        records = catalog_services.dataset_version_preview(version=version, limit=PREVIEW_RECORDS)
    except (ConnectorError, OSError) as exc:
        preview_error = str(exc)
    columns = list(dict.fromkeys(k for r in records for k in r))
    rows = [[_cell(r.get(c)) for c in columns] for r in records]
    return render(
        request,
        "tasks/version_detail.html",
        {
            "title": str(version),
            "version": version,
            "lineage": selectors.version_lineage(version),
            "columns": columns,
            "rows": rows,
            "preview_error": preview_error,
            "can_download": _can_operate(request.user),
        },
    )


def _cell(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 300 else text[:299] + "…"


@role_required(ROLE_OPERATOR)
@require_GET
def version_download(request, pk):
    """Stream a version's data (operators and admins; every download is audited)."""
    version = get_object_or_404(DatasetVersion.objects.select_related("dataset", "dataset__source"), pk=pk)
    try:
        chunks, name, size = catalog_services.dataset_version_download(version=version, actor=request.user)
    except (ConnectorError, OSError) as exc:
        messages.error(request, str(exc))
        return redirect("tasks:version-detail", pk=version.pk)
    response = StreamingHttpResponse(chunks, content_type="application/octet-stream")
    response["Content-Disposition"] = content_disposition_header(True, name)
    if size is not None:
        response["Content-Length"] = str(size)
    return response
