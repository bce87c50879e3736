"""Template tags of the portal shell (overview panels)."""

from django import template

from dataflare_portal.core.views import overview_panels_render

register = template.Library()


@register.simple_tag(takes_context=True)
def overview_panels(context):
    """The rendered overview panels for this request (see core/registry.register_overview_panel)."""
    request = context.get("request")
    return overview_panels_render(request) if request is not None else []
