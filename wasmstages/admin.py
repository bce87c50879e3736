"""Admin of WebAssembly stage modules: upload a new version; stored versions are read-only."""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.utils.translation import gettext_lazy as _

from dataflare_portal.core.admin_base import PortalModelAdmin

from .models import NAME_RE, WasmModule
from .services import MAX_MODULE_BYTES, wasm_module_upload, wasm_module_validate


class WasmModuleUploadForm(forms.ModelForm):
    """Name, description and the .wasm file; the version number is the next one for the name."""

    file = forms.FileField(
        label=_("module file (.wasm)"), help_text=_("Built for the stage ABI (docs/wasm-stages.md).")
    )

    class Meta:
        model = WasmModule
        fields = ["name", "description"]

    def clean_name(self):
        name = self.cleaned_data["name"]
        forms.RegexField(regex=NAME_RE).clean(name)
        return name

    def clean(self):
        cleaned = super().clean()
        upload = cleaned.get("file")
        if upload is None or not cleaned.get("name"):
            return cleaned
        if upload.size > MAX_MODULE_BYTES:
            self.add_error(
                "file",
                _("The module is %(size)d bytes; the limit is %(limit)d bytes.")
                % {"size": upload.size, "limit": MAX_MODULE_BYTES},
            )
            return cleaned
        upload.seek(0)
        self.content = upload.read()
        try:
            wasm_module_validate(name=cleaned["name"], content=self.content)
        except ValidationError as exc:
            for message in exc.message_dict.get("content", exc.messages):
                self.add_error("file", message)
        return cleaned

    def _post_clean(self):
        # The row is built by the upload service from the file; the model's own checks run there.
        pass


@admin.register(WasmModule)
class WasmModuleAdmin(PortalModelAdmin):
    list_display = ["name", "version", "size", "short_sha256", "uploaded_by", "created_at"]
    list_filter = ["name"]
    search_fields = ["name", "sha256", "description"]
    ordering = ["name", "-version"]
    list_select_related = ["uploaded_by"]
    fields = ["name", "version", "sha256", "size", "exports", "imports", "description", "uploaded_by", "created_at"]
    readonly_fields = ["name", "version", "sha256", "size", "exports", "imports", "uploaded_by", "created_at"]

    @admin.display(description=_("sha256"))
    def short_sha256(self, obj):
        return obj.sha256[:12]

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = WasmModuleUploadForm
            kwargs["fields"] = ["name", "description", "file"]
        return super().get_form(request, obj, **kwargs)

    def get_fields(self, request, obj=None):
        return ["name", "description", "file"] if obj is None else self.fields

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else self.readonly_fields

    def has_delete_permission(self, request, obj=None):
        return False  # a pipeline or a finished run may name any version

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        row = wasm_module_upload(
            name=form.cleaned_data["name"],
            content=form.content,
            description=form.cleaned_data.get("description", ""),
            actor=request.user,
        )
        obj.pk = row.pk
        obj.version = row.version
        obj._state.adding = False
