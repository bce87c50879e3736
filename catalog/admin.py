"""Catalog admin: projects, data sources (write-only credentials, connection test), datasets, versions."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from dataflare_portal.core.admin_base import BigTableAdmin, PortalModelAdmin, status_badge
from dataflare_portal.core.schemaform import SchemaFormWidget, attach_error_paths

from . import selectors, services
from .choices import DatasetVersionStatus
from .connectors import ConnectorError, connector_class, connector_kinds
from .connectors.files import allowed_roots
from .connectors.registry import kind_choices
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


def secret_field_labels() -> dict:
    """{secret field name: label} over every registered kind (password first): the admin's credential inputs."""
    out = {"password": _("Password")}
    for kind in connector_kinds():
        cls = connector_class(kind)
        for name in cls.secret_fields:
            out.setdefault(name, cls.secret_labels.get(name) or name.replace("_", " ").capitalize())
    return out


def connector_extras() -> dict:
    """Per kind: a line of help (the allowed roots for files) and which form parts do not apply."""
    out = {}
    names = list(secret_field_labels())
    for kind in connector_kinds():
        cls = connector_class(kind)
        if cls.secret_fields:
            # Only this kind's credential inputs show (admin rows carry the class field-<name>).
            extra = {"hide": [f"field-{n}" for n in names if n not in cls.secret_fields]}
        else:
            extra = {"hide": ["df-credentials"]}
        if kind == "file":
            roots = ", ".join(str(r) for r in allowed_roots()) or gettext("none configured (FILE_ROOTS)")
            extra["help"] = gettext("The root must be a folder below one of the allowed roots: %(roots)s.") % {
                "roots": roots
            }
        out[kind] = extra
    return out


def _secret_input(label, *, multiline: bool = False) -> forms.CharField:
    # A multi-line credential (extra headers) is a text area that starts empty: stored values are never shown.
    widget = (
        forms.Textarea(attrs={"rows": 3, "autocomplete": "off", "spellcheck": "false"})
        if multiline
        else forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"})
    )
    return forms.CharField(
        label=label,
        required=False,
        strip=False,
        widget=widget,
        help_text=_("Stored encrypted and never shown again. Leave blank to keep the stored value."),
    )


class DataSourceForm(forms.ModelForm):
    """Credentials are write-only password inputs, one per secret of the kind: never rendered back, blank keeps."""

    password = _secret_input(_("Password"))
    clear_password = forms.BooleanField(label=_("Remove the stored credentials"), required=False)

    class Meta:
        model = DataSource
        fields = ["project", "name", "kind", "description", "config"]
        widgets = {
            "config": SchemaFormWidget(
                schemas=connector_schemas, references=connector_references, extras=connector_extras
            )
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The kind selector offers every registered kind (plug-ins too), with their labels.
        self.fields["kind"].choices = [("", "---------"), *((k, str(v)) for k, v in kind_choices())]

    def entered_secret(self) -> dict:
        """The credentials typed into this form for its kind (blank inputs are left out: they keep the stored value)."""
        data = self.cleaned_data
        try:
            names = connector_class(data.get("kind") or "").secret_fields
        except ConnectorError:
            return {}
        return {n: data[n] for n in names if data.get(n)}

    def clean(self):
        data = super().clean()
        kind = data.get("kind")
        if not kind:
            return data
        try:
            takes = connector_class(kind).secret_fields
        except ConnectorError:
            return data  # the kind error is reported on its own field
        for name in secret_field_labels():
            if data.get(name) and name not in takes:
                message = (
                    gettext("A %(kind)s data source takes no password.")
                    if name == "password"
                    else gettext("A %(kind)s data source takes no %(name)s.")
                )
                self.add_error(name, message % {"kind": kind, "name": self.fields[name].label})
        return data

    def full_clean(self):
        super().full_clean()
        attach_error_paths(self, "config")


class UploadForm(forms.Form):
    """A file to upload into a files data source, and the name of the dataset it becomes."""

    name = forms.CharField(label=_("Dataset name"), max_length=100)
    location = forms.CharField(
        label=_("Path in the folder"),
        max_length=500,
        required=False,
        help_text=_("Where the file goes below the data source's folder, e.g. raw/orders.jsonl; empty: its own name."),
    )
    description = forms.CharField(label=_("Description"), required=False, widget=forms.Textarea(attrs={"rows": 2}))
    file = forms.FileField(label=_("File (.jsonl, .csv or .parquet)"))


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

    @admin.display(description=_("status"), ordering="status")
    def status_column(self, obj):
        return status_badge(obj.status, obj.get_status_display())

    @admin.display(description=_("stored credentials"))
    def secret_state(self, obj):
        return gettext("Stored (encrypted)") if obj and obj.secret_ciphertext else gettext("None")

    def get_form(self, request, obj=None, **kwargs):
        # One write-only input per credential of any registered kind, declared on the form class so the
        # admin's field list may name them (plug-ins bring their own).
        multiline = {n for kind in connector_kinds() for n in connector_class(kind).secret_multiline}
        inputs = {
            n: _secret_input(label, multiline=n in multiline)
            for n, label in secret_field_labels().items()
            if n != "password"
        }
        kwargs["form"] = type("DataSourceForm", (self.form,), inputs)
        return super().get_form(request, obj, **kwargs)

    def get_fieldsets(self, request, obj=None):
        # The credential inputs are those of every registered kind (plug-ins add theirs); the script shows
        # only the selected kind's.
        names = list(secret_field_labels())
        return [
            (None, {"fields": ["project", "name", "kind", "description", "config"]}),
            (_("Credentials"), {"fields": [*names, "clear_password", "secret_state"], "classes": ["df-credentials"]}),
            (_("Status"), {"fields": ["status_column", "last_checked_at", "last_error", "created_at", "updated_at"]}),
        ]

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        secret_kwargs = {}
        entered = form.entered_secret()
        if data.get("clear_password"):
            secret_kwargs["secret"] = None
        elif entered:
            secret_kwargs["secret"] = entered
            if change:
                secret_kwargs["secret_merge"] = True  # a blank input keeps that stored credential
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
            path(
                "<int:pk>/upload/",
                self.admin_site.admin_view(self.upload_view),
                name="catalog_datasource_upload",
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

    def change_view(self, request, object_id, form_url="", extra_context=None):
        from dataflare_portal.core.auth import ROLE_OPERATOR, has_role

        extra = {"can_upload": has_role(request.user, ROLE_OPERATOR), **(extra_context or {})}
        return super().change_view(request, object_id, form_url, extra)

    def upload_view(self, request, pk):
        """Upload a file into a files source's folder: a new dataset and its first version, with the sha256 shown."""
        from django.conf import settings
        from django.core.exceptions import ValidationError
        from django.template.defaultfilters import filesizeformat

        from dataflare_portal.core.auth import ROLE_OPERATOR, has_role

        source = get_object_or_404(DataSource.objects.select_related("project"), pk=pk)
        # Uploading data is an operator's job (as running a pipeline is); changing the source stays the admin's.
        if not has_role(request.user, ROLE_OPERATOR):
            raise PermissionDenied
        form = UploadForm(request.POST or None, request.FILES or None)
        version = None
        refused = getattr(request, "upload_refused", None)
        if request.method == "POST" and refused:
            form.is_valid()
            form.errors.pop("file", None)
            form.add_error(
                "file",
                gettext("The file is larger than the upload limit of %(limit)s bytes.") % {"limit": f"{refused[1]:,}"},
            )
        elif request.method == "POST" and form.is_valid():
            upload = form.cleaned_data["file"]
            try:
                version = services.dataset_upload(
                    actor=request.user,
                    source=source,
                    name=form.cleaned_data["name"],
                    location=form.cleaned_data["location"] or upload.name,
                    description=form.cleaned_data["description"],
                    chunks=upload.chunks(),
                )
            except ValidationError as exc:
                for field, errors in exc.message_dict.items():
                    form.add_error(field if field in form.fields else None, errors)
        limit = int(settings.DATASET_UPLOAD_MAX_BYTES)
        context = {
            **self.admin_site.each_context(request),
            "title": gettext("Upload a file into %(source)s") % {"source": source.name},
            "opts": self.model._meta,
            "source": source,
            "form": form,
            "version": version,
            "is_files": source.kind == "file",
            "limit": filesizeformat(limit),
            "limit_bytes": limit,
        }
        return TemplateResponse(request, "catalog/datasource_upload.html", context, status=400 if form.errors else 200)


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


class VersionDiffForm(forms.Form):
    """Which version to compare with and by which field."""

    against = forms.ModelChoiceField(queryset=DatasetVersion.objects.none(), label=_("Compare with"))
    key = forms.CharField(label=_("Key field"), max_length=200)

    def __init__(self, *args, versions=None, **kwargs):
        super().__init__(*args, **kwargs)
        if versions is not None:
            self.fields["against"].queryset = versions


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

    change_form_template = "catalog/datasetversion_change_form.html"

    def get_urls(self):
        return [
            path(
                "<int:pk>/diff/",
                self.admin_site.admin_view(self.diff_view),
                name="catalog_datasetversion_diff",
            ),
            *super().get_urls(),
        ]

    def diff_view(self, request, pk):
        """Compare this version with another by a key field: counts and samples (GET: reads only)."""
        version = get_object_or_404(DatasetVersion.objects.select_related("dataset", "dataset__source"), pk=pk)
        if not self.has_view_permission(request, version):
            raise PermissionDenied
        others = DatasetVersion.objects.filter(
            dataset=version.dataset, status__in=DatasetVersionStatus.readable()
        ).exclude(pk=version.pk)
        initial = {"key": (version.dataset.options or {}).get("key", "")}
        form = VersionDiffForm(request.GET or None, versions=others, initial=initial)
        result = None
        error = None
        if form.is_bound and form.is_valid():
            try:
                result = services.dataset_version_diff(
                    left=version, right=form.cleaned_data["against"], key=form.cleaned_data["key"], sample=10
                )
            except (ConnectorError, OSError) as exc:
                error = str(getattr(exc, "message", exc))
        context = {
            **self.admin_site.each_context(request),
            "title": gettext("Compare %(version)s with another version") % {"version": version},
            "opts": self.model._meta,
            "version": version,
            "form": form,
            "result": result,
            "error": error,
        }
        return TemplateResponse(request, "catalog/version_diff.html", context)

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
