"""Alert pages inside the admin shell: the inbox (filters, acknowledge, resolve) and an alert's evidence."""

from __future__ import annotations

import json

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db.models import Case, IntegerField, Value, When
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from catalog.models import Project
from dataflare_portal.core.auth import has_role, role_required
from dataflare_portal.core.services import ROLE_OPERATOR, ROLE_VIEWER
from pipelines.models import Pipeline

from . import services
from .choices import AlertStatus, Severity
from .filtersets import AlertFilterSet
from .models import Alert

PAGE_SIZE = 50


def _back(request, default: str) -> HttpResponseRedirect:
    target = request.POST.get("next") or default
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        target = default
    return HttpResponseRedirect(target)


@require_GET
@role_required(ROLE_VIEWER)
def inbox(request):
    """Open alerts first, critical first, newest first; filters by status, severity, project and rule kind."""
    params = request.GET.copy()
    if not any(k in params for k in ("status", "open", "severity", "project", "kind", "rule", "pipeline")):
        params["open"] = "true"
    base = Alert.objects.select_related("rule", "project", "pipeline", "acknowledged_by")
    filterset = AlertFilterSet(params, queryset=base)
    qs = filterset.qs if filterset.is_valid() else base.none()
    qs = qs.annotate(
        open_rank=Case(
            When(status=AlertStatus.FIRING, then=Value(0)),
            When(status=AlertStatus.ACKNOWLEDGED, then=Value(1)),
            default=Value(2),
            output_field=IntegerField(),
        ),
        sev_rank=Case(When(severity=Severity.CRITICAL, then=Value(0)), default=Value(1), output_field=IntegerField()),
    ).order_by("open_rank", "sev_rank", "-fired_at", "-pk")
    try:
        page = max(1, int(request.GET.get("page", "1")))
    except ValueError:
        page = 1
    rows = list(qs[(page - 1) * PAGE_SIZE : page * PAGE_SIZE + 1])
    has_next = len(rows) > PAGE_SIZE
    query = params.copy()
    query.pop("page", None)
    from .selectors import open_alert_counts

    context = {
        "title": _("Alerts"),
        "alerts": rows[:PAGE_SIZE],
        "filterset": filterset,
        "counts": open_alert_counts(),
        "page": page,
        "has_next": has_next,
        "query": query.urlencode(),
        "can_act": _can_act(request),
        "paused_projects": Project.objects.filter(runs_paused=True).order_by("name")[:50],
        "paused_pipelines": Pipeline.objects.filter(runs_paused=True).select_related("project").order_by("name")[:50],
    }
    return render(request, "alerts/inbox.html", context)


def _can_act(request) -> bool:
    return has_role(request.user, ROLE_OPERATOR)


@require_GET
@role_required(ROLE_VIEWER)
def detail(request, pk: int):
    """One alert: its evidence with links, its timeline and its notifications."""
    alert = get_object_or_404(Alert.objects.select_related("rule", "project", "pipeline"), pk=pk)
    context = {
        "title": alert.title_display,
        "alert": alert,
        "events": alert.events.select_related("actor").order_by("at", "pk")[:200],
        "notifications": alert.notifications.select_related("channel").order_by("-created_at")[:100],
        "can_act": _can_act(request),
        "links": (alert.evidence or {}).get("links", {}),
        "paused": (alert.evidence or {}).get("paused"),
        "evidence_json": json.dumps(alert.evidence, indent=2, sort_keys=True, default=str),
    }
    return render(request, "alerts/detail.html", context)


def _act(request, pk: int, action):
    alert = get_object_or_404(Alert, pk=pk)
    note = (request.POST.get("note") or "").strip()[:2000]
    try:
        action(alert, note)
    except ValidationError as exc:
        for message in exc.messages:
            messages.error(request, message)
    return _back(request, reverse("alerts:detail", args=[pk]))


@require_POST
@role_required(ROLE_OPERATOR)
def acknowledge(request, pk: int):
    def run(alert, note):
        services.alert_acknowledge(alert=alert, actor=request.user, note=note)
        messages.success(request, _("Alert acknowledged."))

    return _act(request, pk, run)


@require_POST
@role_required(ROLE_OPERATOR)
def resolve(request, pk: int):
    def run(alert, note):
        services.alert_resolve(alert=alert, actor=request.user, note=note)
        messages.success(request, _("Alert resolved."))

    return _act(request, pk, run)


@require_POST
@role_required(ROLE_OPERATOR)
def lift_pause(request):
    """Lift a budget pause of a project or pipeline (operator), with a note for the audit log."""
    note = (request.POST.get("note") or "").strip()[:2000]
    scope = None
    if request.POST.get("pipeline"):
        scope = get_object_or_404(Pipeline, pk=request.POST["pipeline"])
    elif request.POST.get("project"):
        scope = get_object_or_404(Project, pk=request.POST["project"])
    if scope is None:
        messages.error(request, _("Choose a project or a pipeline."))
    else:
        try:
            services.budget_pause_lift(scope=scope, actor=request.user, note=note)
            messages.success(request, _("New runs of %(name)s may start again.") % {"name": scope})
        except ValidationError as exc:
            for message in exc.messages:
                messages.error(request, message)
    return _back(request, reverse("alerts:inbox"))
