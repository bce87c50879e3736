"""Admin building blocks shared by every app: audited saves, status badges, a paginator that never counts."""

from django.contrib import admin
from django.contrib.admin.views.main import PAGE_VAR
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


def badge_class(value: str) -> str:
    """The badge colour class (ok, info, warn, bad, muted) of a status value."""
    return BADGE_CLASSES.get(str(value), "muted")


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
    # The change list names its cells after the callable ("field-decision_badge"), one per column.
    column.__name__ = f"{field}_badge"
    return column


class WindowPaginator(Paginator):
    """Pages a big table without COUNT(*): it reads one row past the page to learn whether more follow.

    `count` is the rows up to and including that look-ahead row, so Django's page links reach the
    next page and no further; the templates (admin/pagination.html, admin/search_form.html) show
    "rows 51–100, more follow" instead of a total. The rows fetched for the window are the page's.
    """

    uncounted = True

    def __init__(self, object_list, per_page, orphans=0, allow_empty_first_page=True, page_number=1):
        super().__init__(object_list, per_page, 0, allow_empty_first_page)
        self.page_number = max(1, page_number)

    @cached_property
    def _window(self) -> tuple[int, list]:
        offset = (self.page_number - 1) * self.per_page
        return offset, list(self.object_list[offset : offset + self.per_page + 1])

    @cached_property
    def count(self) -> int:
        offset, rows = self._window
        return offset + len(rows)

    @property
    def has_more(self) -> bool:
        return len(self._window[1]) > self.per_page

    @property
    def first_row(self) -> int:
        offset, rows = self._window
        return offset + 1 if rows else 0

    @property
    def last_row(self) -> int:
        offset, rows = self._window
        return offset + min(len(rows), self.per_page)

    def page(self, number):
        number = self.validate_number(number)
        if number == self.page_number:
            return self._get_page(self._window[1][: self.per_page], number, self)
        return super().page(number)


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
    """For tables that grow without bound: no COUNT(*) of any kind, and no "show all"."""

    paginator = WindowPaginator
    show_full_result_count = False
    list_max_show_all = 0  # "show all" would load every row of the table

    def get_paginator(self, request, queryset, per_page, orphans=0, allow_empty_first_page=True):
        try:
            page_number = int(request.GET.get(PAGE_VAR, 1))
        except (TypeError, ValueError):
            page_number = 1  # the changelist reports the bad page number itself
        return self.paginator(queryset, per_page, orphans, allow_empty_first_page, page_number=page_number)


__all__ = ["BigTableAdmin", "PortalModelAdmin", "WindowPaginator", "badge_column", "status_badge", "_"]
