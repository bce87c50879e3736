"""Admin building blocks shared by every app: audited saves, status badges, a paginator that never counts."""

from django.contrib import admin
from django.core.paginator import Paginator
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from .services import object_delete, object_save

# Status value -> badge colour class (see static/portal/portal.css). Unknown values are grey.
BADGE_CLASSES = {
    "ok": "ok",
    "succeeded": "ok",
    "published": "ok",
    "active": "ok",
    "accepted": "ok",
    "sent": "ok",
    "resolved": "ok",
    "overridden": "warn",
    "running": "info",
    "queued": "info",
    "building": "info",
    "sending": "info",
    "pending": "muted",
    "draft": "muted",
    "unknown": "muted",
    "archived": "muted",
    "waiting": "warn",
    "cancelling": "warn",
    "acknowledged": "warn",
    "warning": "warn",
    "cancelled": "muted",
    "failed": "bad",
    "error": "bad",
    "crashed": "bad",
    "rejected": "bad",
    "firing": "bad",
    "critical": "bad",
}


def status_badge(value: str, label: str | None = None):
    """An HTML badge for a status value; colours keep readable contrast and the text says the state."""
    css = BADGE_CLASSES.get(str(value), "muted")
    return format_html('<span class="df-badge df-badge-{}">{}</span>', css, label or value)


def badge_column(field: str, description: str):
    """A list_display column rendering `field` (a choices field) as a badge."""

    def column(*args):
        # Called as column(obj) from list_display, or as a bound method column(admin, obj) when
        # assigned as a ModelAdmin attribute: the row is always the last argument.
        obj = args[-1]
        return status_badge(getattr(obj, field), getattr(obj, f"get_{field}_display")())

    column.short_description = description
    column.admin_order_field = field
    return column


class NoCountPaginator(Paginator):
    """Never counts a big table: reports a count large enough to show next pages (Healthchecks' trick)."""

    @cached_property
    def count(self):
        # One page beyond the current window is enough to render "next"; the real total is never asked.
        return 10**9


class PortalModelAdmin(admin.ModelAdmin):
    """Admin whose saves and deletes go through the audited core services."""

    list_per_page = 50

    def save_model(self, request, obj, form, change):
        object_save(actor=request.user, instance=obj)

    def delete_model(self, request, obj):
        object_delete(actor=request.user, instance=obj)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            object_delete(actor=request.user, instance=obj)


class BigTableAdmin(PortalModelAdmin):
    """For tables that grow without bound: no full COUNT, no full-result count."""

    paginator = NoCountPaginator
    show_full_result_count = False


__all__ = ["BigTableAdmin", "NoCountPaginator", "PortalModelAdmin", "badge_column", "status_badge", "_"]
