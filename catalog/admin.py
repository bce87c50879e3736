"""Catalog admin: projects, data sources (write-only credentials, connection test), datasets, versions."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import NoReverseMatch, path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from dataflare_portal.core.admin_base import BigTableAdmin, PortalModelAdmin, status_badge
from dataflare_portal.core.schemaform import SchemaFormWidget, attach_error_paths

from . import selectors, services
from .connectors import ConnectorError, connector_class, connector_kinds
from .connectors.files import allowed_roots
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


def connector_schemas() -> dict:
    """{data source kind: its connector's config JSON Schema}."""
    return {kind: connector_class(kind).config_schema for kind in connector_kinds()}


def connector_references() -> dict:
    """The allowed file roots, offered as suggestions for a file source's root."""
    return {"root": [{"value": str(root), "label": gettext("allowed root")} for root in allowed_roots()]}


def connector_extras() -> dict:
    """Per kind: a line of help (the allowed roots for files) and which form parts do not apply."""
    out = {}
    for kind in connector_kinds():
        cls = connector_class(kind)
        extra = {"hide": [] if cls.secret_fields else ["df-credentials"]}
        if kind == "file":
            roots = ", ".join(str(r) for r in allowed_roots()) or gettext("none configured (FILE_ROOTS)")
            extra["help"] = gettext("The root must be a folder below one of the allowed roots: %(roots)s.") % {
                "roots": roots
            }
        out[kind] = extra
    return out


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
        widgets = {
            "config": SchemaFormWidget(
                schemas=connector_schemas, references=connector_references, extras=connector_extras
            )
        }

    def clean(self):
        data = super().clean()
        kind = data.get("kind")
        if kind and data.get("password"):
            try:
                takes_secret = bool(connector_class(kind).secret_fields)
            except ConnectorError:
                takes_secret = True  # the kind error is reported on its own field
            if not takes_secret:
                self.add_error("password", gettext("A %(kind)s data source takes no password.") % {"kind": kind})
        return data

    def full_clean(self):
        super().full_clean()
        attach_error_paths(self, "config")


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
    change_form_template = "catalog/datasource_change_form.html"
    fieldsets = [
        (None, {"fields": ["project", "name", "kind", "description", "config"]}),
        (_("Credentials"), {"fields": ["password", "clear_password", "secret_state"], "classes": ["df-credentials"]}),
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
            self._test_one(request, source)

    def _test_one(self, request, source):
        result = services.datasource_test_connection(actor=request.user, source=source)
        level = messages.SUCCESS if result.ok else messages.ERROR
        self.message_user(
            request,
            gettext("%(name)s: %(detail)s (%(ms).0f ms)")
            % {"name": source.name, "detail": result.detail, "ms": result.latency_ms},
            level,
        )

    def get_urls(self):
        return [
            path(
                "<int:pk>/test-connection/",
                self.admin_site.admin_view(self.test_connection_view),
                name="catalog_datasource_test",
            ),
            *super().get_urls(),
        ]

    def test_connection_view(self, request, pk):
        """The "Test connection" button of a source's own page (POST only: it touches the outside)."""
        source = get_object_or_404(DataSource, pk=pk)
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_change_permission(request, source):
            raise PermissionDenied
        self._test_one(request, source)
        return HttpResponseRedirect(reverse("admin:catalog_datasource_change", args=[pk]))


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
    list_display = [
        "version_page_link",
        "dataset",
        "version",
        "status_column",
        "record_count",
        "short_checksum",
        "published_at",
    ]
    list_filter = ["status"]
    list_select_related = ["dataset"]
    search_fields = ["dataset__name", "checksum", "location"]
    autocomplete_fields = ["dataset"]
    readonly_fields = [
        "version_page",
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

    @admin.display(description=_("dataset version"))
    def version_page_link(self, obj):
        try:
            return format_html('<a href="{}">{}</a>', reverse("tasks:version-detail", args=[obj.pk]), str(obj))
        except NoReverseMatch:
            return str(obj)

    @admin.display(description=_("overview"))
    def version_page(self, obj):
        # The human page (lineage, preview, download) is served by the tasks app, which knows runs.
        try:
            url = reverse("tasks:version-detail", args=[obj.pk])
        except NoReverseMatch:
            return "—"
        return format_html('<a href="{}">{}</a>', url, gettext("Lineage, preview and download"))

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
