"""Overview helpers: render the panels apps register for the admin index (the operations overview)."""

import logging

from django.template.loader import render_to_string
from django.utils.safestring import SafeString
from django.utils.translation import gettext as _

from . import registry

logger = logging.getLogger(__name__)


def overview_panels_render(request) -> list[SafeString]:
    """Render every registered overview panel in order; a failing panel shows an error box, not a 500."""
    rendered = []
    for order, panel in list(registry.overview_panels):
        try:
            spec = panel(request)
            if not spec:  # a panel with nothing to show right now
                continue
            rendered.append(render_to_string(spec["template"], spec.get("context") or {}, request=request))
        except Exception:
            # One app's broken query must not take the operator's home page down.
            logger.exception("overview panel %r (order %s) failed", getattr(panel, "__name__", panel), order)
            rendered.append(
                render_to_string(
                    "portal/_panel_error.html",
                    {"panel_name": getattr(panel, "__name__", str(panel)), "message": _("This panel failed to load.")},
                    request=request,
                )
            )
    return rendered


def favicon(request):
    """/favicon.ico, which browsers ask for on pages without an icon link (JSON, the API): the portal's icon."""
    from django.http import HttpResponseRedirect
    from django.templatetags.static import static

    return HttpResponseRedirect(static("portal/favicon.svg"))
