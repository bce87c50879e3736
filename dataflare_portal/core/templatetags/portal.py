"""Template tags of the portal shell (overview panels), its number format and code marks in help text."""

from django import template
from django.utils.html import escape, format_html
from django.utils.safestring import mark_safe

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


@register.filter
def codemarks(text):
    """Help text whose `backticked` parts are code (keys, commands, host:port): escaped, those parts in <code>.

    Translators keep the backticks, so a code stays a code in every language.
    """
    parts = str(text).split("`")
    return mark_safe(  # noqa: S308 - every part is escaped here
        "".join(format_html("<code>{}</code>", p) if i % 2 else escape(p) for i, p in enumerate(parts))
    )
