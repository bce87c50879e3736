"""Template tags of the portal shell (overview panels) and its number format."""

from django import template

from dataflare_portal.core.views import overview_panels_render

register = template.Library()


@register.simple_tag(takes_context=True)
def overview_panels(context):
    """The rendered overview panels for this request (see core/registry.register_overview_panel)."""
    request = context.get("request")
    return overview_panels_render(request) if request is not None else []


@register.filter
def grouped(value):
    """A number with comma thousands separators in every language, as the KPI cards show it.

    (Django's zh_Hans format has no thousands separator, so intcomma printed 3216200 beside a
    KPI card's 17,631,536.) Anything that is not a number passes through unchanged.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    return f"{value:,}" if isinstance(value, int) else f"{value:,.2f}".rstrip("0").rstrip(".")
