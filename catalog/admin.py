"""Catalog admin: projects, data sources (write-only credentials, connection test), datasets, versions."""

from django import forms
from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from dataflare_portal.core.admin_base import BigTableAdmin, PortalModelAdmin, status_badge

from . import selectors, services
from .connectors import ConnectorError
from .models import Dataset, DatasetVersion, DataSource, Project

PREVIEW_ROWS = 10
PREVIEW_CELL_CHARS = 120


@admin.register(Project)
class ProjectAdmin(PortalModelAdmin):
    list_display = ["name", "slug", "runs_paused", "created_at"]
    list_filter = ["runs_paused"]
    search_fields = ["name", "slug", "description"]
    prepopulated_fields = {"slug": ("name",)}
    readonly_fields = ["runs_paused", "paused_reason", "created_at", "updated_at"]


class DataSourceForm(forms.ModelForm):
    """The secret is a write-only password field: never rendered back, blank keeps the stored one."""

    password = forms.CharField(
        label=_("Password"),
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text=_("Stored encrypted and never shown again. Leave blank to keep the stored password."),
    )
    clear_password = forms.BooleanField(label=_("Remove the stored password"), required=False)

    class Meta:
        model = DataSource
        fields = ["project", "name", "kind", "description", "config"]


@admin.register(DataSource)
class DataSourceAdmin(PortalModelAdmin):
    form = DataSourceForm
    list_display = ["name", "project", "kind", "status_column", "last_checked_at"]
    list_filter = ["kind", "status", "project"]
    list_select_related = ["project"]
    search_fields = ["name", "description", "project__name"]
    autocomplete_fields = ["project"]
    readonly_fields = ["secret_state", "status_column", "last_checked_at", "last_error", "created_at", "updated_at"]
    actions = ["test_connection"]
    fieldsets = [
        (None, {"fields": ["project", "name", "kind", "description", "config"]}),
        (_("Credentials"), {"fields": ["password", "clear_password", "secret_state"]}),
        (_("Status"), {"fields": ["status_column", "last_checked_at", "last_error", "created_at", "updated_at"]}),
    ]

    @admin.display(description=_("status"), ordering="status")
    def status_column(self, obj):
        return status_badge(obj.status, obj.get_status_display())

    @admin.display(description=_("stored credentials"))
    def secret_state(self, obj):
        return gettext("Stored (encrypted)") if obj and obj.secret_ciphertext else gettext("None")

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        secret_kwargs = {}
        if data.get("clear_password"):
            secret_kwargs["secret"] = None
        elif data.get("password"):
            secret_kwargs["secret"] = {"password": data["password"]}
        fields = {k: data[k] for k in ("project", "name", "kind", "description", "config") if k in data}
        if change:
            source = DataSource.objects.get(pk=obj.pk)
            saved = services.datasource_update(actor=request.user, source=source, **fields, **secret_kwargs)
        else:
            saved = services.datasource_create(
                actor=request.user, secret=secret_kwargs.get("secret"), **{"description": "", **fields}
            )
        obj.pk = saved.pk
        obj.secret_ciphertext = saved.secret_ciphertext

    @admin.action(description=_("Test connection"))
    def test_connection(self, request, queryset):
        for source in queryset:
            result = services.datasource_test_connection(actor=request.user, source=source)
            level = messages.SUCCESS if result.ok else messages.ERROR
            self.message_user(
                request,
                gettext("%(name)s: %(detail)s (%(ms).0f ms)")
                % {"name": source.name, "detail": result.detail, "ms": result.latency_ms},
                level,
            )


@admin.register(Dataset)
class DatasetAdmin(PortalModelAdmin):
    list_display = ["name", "project", "source", "format", "row_count", "profiled_at"]
    list_filter = ["format", "project"]
    list_select_related = ["project", "source"]
    search_fields = ["name", "description", "location", "project__name"]
    autocomplete_fields = ["project", "source"]
    readonly_fields = ["schema_table", "row_count", "profiled_at", "sample_preview", "created_at", "updated_at"]
    actions = ["profile"]
    fieldsets = [
        (None, {"fields": ["project", "source", "name", "description", "format", "location", "options"]}),
        (_("Profile"), {"fields": ["row_count", "profiled_at", "schema_table", "sample_preview"]}),
        (_("History"), {"fields": ["created_at", "updated_at"]}),
    ]

    @admin.action(description=_("Profile (schema and row count)"))
    def profile(self, request, queryset):
        for dataset in queryset.select_related("source"):
            try:
                result = services.dataset_profile(actor=request.user, dataset=dataset)
            except (ConnectorError, OSError) as exc:
                self.message_user(
                    request, gettext("%(name)s: %(error)s") % {"name": dataset.name, "error": exc}, messages.ERROR
                )
                continue
            self.message_user(
                request,
                gettext("%(name)s: %(rows)d rows, %(fields)d fields.")
                % {"name": dataset.name, "rows": result["row_count"], "fields": len(result["schema"])},
                messages.SUCCESS,
            )

    @admin.display(description=_("schema"))
    def schema_table(self, obj):
        if not obj or not obj.schema:
            return gettext("Not profiled yet.")
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (f.get("name"), f.get("type"), gettext("yes") if f.get("nullable") else gettext("no"))
                for f in obj.schema
            ),
        )
        return format_html(
            '<table class="df-schema"><thead><tr><th>{}</th><th>{}</th><th>{}</th></tr></thead>'
            "<tbody>{}</tbody></table>",
            gettext("field"),
            gettext("type"),
            gettext("nullable"),
            rows,
        )

    @admin.display(description=_("sample records"))
    def sample_preview(self, obj):
        if not obj or not obj.pk or obj.source_id is None:
            return "—"
        try:
            records = services.dataset_preview(dataset=obj, limit=PREVIEW_ROWS)
        except (ConnectorError, OSError) as exc:
            return format_html('<span class="df-badge df-badge-bad">{}</span>', str(exc))
        if not records:
            return gettext("The dataset is empty.")
        columns = list(dict.fromkeys(k for r in records for k in r))
        head = format_html_join("", "<th>{}</th>", ((c,) for c in columns))
        body = format_html_join(
            "",
            "<tr>{}</tr>",
            ((format_html_join("", "<td>{}</td>", ((_cell(r.get(c)),) for c in columns)),) for r in records),
        )
        return format_html(
            '<div class="df-preview"><table><thead><tr>{}</tr></thead><tbody>{}</tbody></table></div>', head, body
        )


def _cell(value) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= PREVIEW_CELL_CHARS else text[: PREVIEW_CELL_CHARS - 1] + "…"


@admin.register(DatasetVersion)
class DatasetVersionAdmin(BigTableAdmin):
    list_display = ["__str__", "dataset", "version", "status_column", "record_count", "short_checksum", "published_at"]
    list_filter = ["status"]
    list_select_related = ["dataset"]
    search_fields = ["dataset__name", "checksum", "location"]
    autocomplete_fields = ["dataset"]
    readonly_fields = [
        "dataset",
        "version",
        "status_column",
        "location",
        "archive_location",
        "checksum",
        "record_count",
        "size_bytes",
        "run_id",
        "template_version_id",
        "model_versions",
        "qc_decision",
        "lineage_parents",
        "lineage_children",
        "lineage",
        "created_at",
        "published_at",
        "archived_at",
    ]
    exclude = ["parents", "status"]

    @admin.display(description=_("status"), ordering="status")
    def status_column(self, obj):
        return status_badge(obj.status, obj.get_status_display())

    def has_add_permission(self, request):
        return False  # versions are created by the publish service only

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description=_("checksum"))
    def short_checksum(self, obj):
        return obj.checksum[:12] if obj.checksum else "—"

    def _links(self, entries):
        if not entries:
            return "—"
        return format_html_join(
            mark_safe("<br>"),  # noqa: S308 (a constant)
            '{}<a href="{}">{}</a> {}',
            (
                (
                    "· " * (e["depth"] - 1),
                    reverse("admin:catalog_datasetversion_change", args=[e["version"].pk]),
                    str(e["version"]),
                    status_badge(e["version"].status, e["version"].get_status_display()),
                )
                for e in entries
            ),
        )

    @admin.display(description=_("derived from"))
    def lineage_parents(self, obj):
        return self._links(selectors.version_ancestors(version=obj))

    @admin.display(description=_("used by"))
    def lineage_children(self, obj):
        return self._links(selectors.version_descendants(version=obj))
