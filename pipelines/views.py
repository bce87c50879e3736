"""Pages of the pipelines app: template versions with their runs and metrics, and the structural diff."""

from django.http import Http404
from django.shortcuts import render
from django.utils.translation import gettext as _

from dataflare_portal.core.auth import role_required
from dataflare_portal.core.services import ROLE_VIEWER

from . import selectors
from .templates_io import template_diff


def _pick(versions, value, default):
    try:
        wanted = int(value)
    except (TypeError, ValueError):
        return default
    return next((v for v in versions if v.pk == wanted), default)


@role_required(ROLE_VIEWER)
def template_versions(request, name: str):
    """All versions of one template with runs and headline numbers; `?a=<id>&b=<id>` shows their diff."""
    versions = list(selectors.template_versions(name)[:200])
    if not versions:
        raise Http404(_("No template named %(name)s.") % {"name": name})
    stats = selectors.template_version_stats([v.pk for v in versions])
    newest = versions[0]
    previous = versions[1] if len(versions) > 1 else versions[0]
    a = _pick(versions, request.GET.get("a"), previous)
    b = _pick(versions, request.GET.get("b"), newest)
    diff = template_diff(a.body, b.body)
    rows = [{"version": v, "stats": stats.get(v.pk, {})} for v in versions]
    context = {
        "title": _("Template %(name)s") % {"name": name},
        "name": name,
        "rows": rows,
        "a": a,
        "b": b,
        "a_stats": stats.get(a.pk, {}),
        "b_stats": stats.get(b.pk, {}),
        "a_runs": selectors.template_recent_runs(a),
        "b_runs": selectors.template_recent_runs(b),
        "diff": diff,
    }
    return render(request, "pipelines/template_versions.html", context)
