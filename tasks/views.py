"""Pages of the engine: run detail (live progress, actions) and workers, inside the admin shell."""

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from dataflare_portal.core.auth import role_required
from dataflare_portal.core.services import ROLE_ADMIN, ROLE_OPERATOR, ROLE_VIEWER, user_role

from . import selectors, services
from .models import StageRun, TaskRun


def _can_operate(user) -> bool:
    return settings.AUTH_MODE == "none" or user_role(user) in (ROLE_OPERATOR, ROLE_ADMIN)


@role_required(ROLE_VIEWER)
@require_GET
def run_detail(request, pk):
    run = get_object_or_404(TaskRun.objects.select_related("pipeline", "project", "task"), pk=pk)
    progress = selectors.run_progress(run)
    quarantine_url = reverse("admin:tasks_quarantinedrecord_changelist")
    for stage in progress["stages"]:
        stage["quarantine_url"] = f"{quarantine_url}?stage_run__id__exact={stage['id']}"
        stage["batches_url"] = f"{reverse('admin:tasks_batch_changelist')}?stage_run__id__exact={stage['id']}"
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
    if not _can_operate(request.user):
        raise PermissionDenied
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
