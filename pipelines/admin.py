"""Admin of the pipelines app. Model-config admin lives in admin_modelconfig.py (gRPC owner)."""

from __future__ import annotations

import json

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.http import HttpResponse, HttpResponseRedirect
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from catalog.models import Dataset, DataSource, Project
from dataflare_portal.core.admin_base import PortalModelAdmin, badge_column
from dataflare_portal.core.schemaform import SchemaFormWidget, attach_error_paths
from dataflare_portal.core.services import object_delete, object_save

from . import services
from .models import Pipeline, PipelineStage, PipelineTemplate, QCPolicy
from .selectors import stage_diagram_nodes
from .stagekinds import registry
from .templates_io import pipeline_template_sync

try:
    from . import admin_modelconfig  # noqa: F401
except ImportError:  # written by the gRPC helper; the portal works without it
    pass


class TemplateUploadForm(forms.Form):
    """Upload a template JSON file; a dry run reports what would be created and writes nothing."""

    file = forms.FileField(label=_("template JSON file"))
    project = forms.ModelChoiceField(
        Project.objects.all(), required=False, label=_("import into project"), help_text=_("Default: the template's.")
    )
    dry_run = forms.BooleanField(label=_("dry run (write nothing)"), required=False, initial=True)


def stage_form_schemas() -> dict:
    """{stage kind: the JSON Schema its config form is built from}."""
    return {kind.name: kind.form_schema() for kind in registry.kinds()}


def stage_references() -> dict:
    """Suggestions for the reference settings of stage configs (publish's dataset, QC's policy...)."""
    datasets = [{"value": d.name, "label": str(d.project)} for d in Dataset.objects.select_related("project")[:500]]
    sources = [{"value": s.name, "label": s.get_kind_display()} for s in DataSource.objects.all()[:500]]
    policies = [{"value": p.name, "label": p.description[:80]} for p in QCPolicy.objects.all()[:500]]
    return {"dataset": datasets, "data_source": sources, "policy": policies}


def stage_kind_extras() -> dict:
    """A line of help per kind, shown above its settings."""
    return {kind.name: {"help": str(kind.description)} for kind in registry.kinds()}


class PipelineStageForm(forms.ModelForm):
    """A stage: the kind is a choice from the registry; its config is a form built from the kind's schema."""

    kind = forms.ChoiceField(label=_("Kind"), choices=())

    class Meta:
        model = PipelineStage
        fields = ("position", "key", "name", "kind", "model_config", "config")
        widgets = {
            "config": SchemaFormWidget(
                schemas=stage_form_schemas, references=stage_references, extras=stage_kind_extras
            ),
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        choices = [(k.name, k.label) for k in registry.kinds()]
        current = self.initial.get("kind") or (self.instance.kind if self.instance.pk else "")
        if current and current not in registry:
            # A kind whose plug-in is gone stays visible so the operator sees what to replace.
            choices.append((current, current))
        self.fields["kind"].choices = [("", "---------"), *choices]

    def full_clean(self):
        super().full_clean()
        attach_error_paths(self, "config")


class PipelineStageInline(admin.StackedInline):
    model = PipelineStage
    form = PipelineStageForm
    fieldsets = ((None, {"fields": (("position", "key", "name"), ("kind", "model_config"), "config")}),)
    extra = 0
    ordering = ("position",)
    autocomplete_fields = ("model_config",)
    classes = ("df-stage-inline",)


@admin.register(Pipeline)
class PipelineAdmin(PortalModelAdmin):
    """Pipelines with their stages; every saved change becomes a template version."""

    list_display = (
        "name",
        "project",
        badge_column("status", _("status")),
        "template_link",
        "input_dataset",
        "output_dataset",
        "qc_policy",
    )
    list_filter = ("status", "project")
    list_select_related = ("project", "template", "input_dataset", "output_dataset", "qc_policy")
    search_fields = ("name", "description")
    autocomplete_fields = ("project", "input_dataset", "output_dataset", "qc_policy")
    readonly_fields = ("stage_diagram", "template", "runs_paused", "paused_reason")
    fieldsets = (
        (None, {"fields": ("project", "name", "description", "status")}),
        (_("Data"), {"fields": ("input_dataset", "output_dataset", "qc_policy")}),
        (_("Stages"), {"fields": ("stage_diagram",)}),
        (_("Execution"), {"fields": ("batch_size", "max_batch_attempts", "template", "runs_paused", "paused_reason")}),
        (_("Run parameters"), {"fields": ("parameters_schema",)}),
    )
    inlines = [PipelineStageInline]
    actions = ["validate_pipelines", "export_templates"]
    change_list_template = "pipelines/pipeline_changelist.html"

    @admin.display(description=_("template version"), ordering="template__version")
    def template_link(self, obj):
        if not obj.template_id:
            return "-"
        url = reverse("pipelines:template-versions", args=[obj.template.name])
        return format_html('<a href="{}">v{}</a>', url, obj.template.version)

    @admin.display(description=_("stages"))
    def stage_diagram(self, obj):
        if not obj or not obj.pk:
            return gettext("Add stages below; the diagram follows once the pipeline is saved.")
        return render_to_string("pipelines/_stage_diagram.html", {"stages": stage_diagram_nodes(obj.stages.all())})

    def save_model(self, request, obj, form, change):
        # The template version is taken in save_related, once the stages are saved too.
        object_save(actor=request.user, instance=obj)

    def save_formset(self, request, form, formset, change):
        instances = formset.save(commit=False)
        for obj in formset.deleted_objects:
            object_delete(actor=request.user, instance=obj)
        for obj in instances:
            object_save(actor=request.user, instance=obj)
        formset.save_m2m()

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        pipeline_template_sync(pipeline=form.instance, actor=request.user)

    def get_urls(self):
        return [
            path("import/", self.admin_site.admin_view(self.import_view), name="pipelines_pipeline_import"),
            *super().get_urls(),
        ]

    def import_view(self, request):
        """Upload a template: dry run first, then import for real."""
        if not self.has_add_permission(request):
            return HttpResponseRedirect(reverse("admin:pipelines_pipeline_changelist"))
        plan = error = None
        form = TemplateUploadForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            upload = form.cleaned_data["file"]
            try:
                if upload.size > settings.MAX_UPLOAD_BYTES:
                    raise services.TemplateInputError(
                        gettext("The file is %(size)d bytes; the limit is %(limit)d bytes.")
                        % {"size": upload.size, "limit": settings.MAX_UPLOAD_BYTES},
                        code="too_large",
                        status=413,
                    )
                plan = services.template_import_text(
                    raw=upload.read(settings.MAX_UPLOAD_BYTES + 1),
                    actor=request.user,
                    dry_run=form.cleaned_data["dry_run"],
                    project=form.cleaned_data["project"],
                    probe=True,
                )
            except services.TemplateInputError as exc:
                error = {"code": exc.code, "message": exc.message, "path": exc.path, "issues": []}
            except services.TemplateValidationFailed as exc:
                error = {"code": "invalid_template", "message": exc.report.summary(), "issues": exc.report.errors}
            if plan is not None and not plan.dry_run:
                self.message_user(
                    request,
                    gettext("Imported %(name)s v%(v)d.") % {"name": plan.template.name, "v": plan.template.version},
                )
                return HttpResponseRedirect(reverse("admin:pipelines_pipeline_change", args=[plan.pipeline.pk]))
        context = {
            **self.admin_site.each_context(request),
            "title": _("Import pipeline template"),
            "form": form,
            "plan": plan,
            "error": error,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "pipelines/template_import.html", context, status=400 if error else 200)

    @admin.action(description=_("Validate selected pipelines"))
    def validate_pipelines(self, request, queryset):
        for pipeline in queryset.select_related("project"):
            report = services.pipeline_check(pipeline=pipeline)
            if report.ok:
                level = messages.WARNING if report.warnings else messages.SUCCESS
                text = gettext("%(p)s: valid.") % {"p": pipeline}
            else:
                level = messages.ERROR
                text = f"{pipeline}: " + "; ".join(
                    f"{i.path}{f' [{i.stage}]' if i.stage else ''}: {i.message}" for i in report.errors[:10]
                )
            if report.warnings:
                text += (
                    " " + gettext("Warnings:") + " " + "; ".join(f"{w.path}: {w.message}" for w in report.warnings[:5])
                )
            self.message_user(request, text, level)

    @admin.action(description=_("Export selected pipeline as template JSON"))
    def export_templates(self, request, queryset):
        pipelines = list(queryset[:2])
        if len(pipelines) != 1:
            self.message_user(request, gettext("Select exactly one pipeline to export."), messages.ERROR)
            return None
        body, template = services.template_export(pipeline=pipelines[0], actor=request.user)
        response = HttpResponse(
            json.dumps(body, indent=2, ensure_ascii=False, sort_keys=True), content_type="application/json"
        )
        response["Content-Disposition"] = f'attachment; filename="{template.name}-v{template.version}.json"'
        return response


@admin.register(PipelineTemplate)
class PipelineTemplateAdmin(admin.ModelAdmin):
    """Template versions are immutable: view, export, compare."""

    list_display = ("name", "version", "checksum_short", "project", "created_at", "created_by", "versions_link")
    list_filter = ("project",)
    search_fields = ("name", "checksum")
    list_select_related = ("project", "created_by")
    readonly_fields = [f.name for f in PipelineTemplate._meta.fields]
    actions = ["export_version"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description=_("checksum"))
    def checksum_short(self, obj):
        return obj.checksum[:12]

    @admin.display(description=_("versions and diff"))
    def versions_link(self, obj):
        return format_html(
            '<a href="{}">{}</a>', reverse("pipelines:template-versions", args=[obj.name]), gettext("Compare")
        )

    @admin.action(description=_("Download selected version as JSON"))
    def export_version(self, request, queryset):
        templates = list(queryset[:2])
        if len(templates) != 1:
            self.message_user(request, gettext("Select exactly one version to download."), messages.ERROR)
            return None
        template = templates[0]
        response = HttpResponse(
            json.dumps(template.body, indent=2, ensure_ascii=False, sort_keys=True), content_type="application/json"
        )
        response["Content-Disposition"] = f'attachment; filename="{template.name}-v{template.version}.json"'
        return response


@admin.register(QCPolicy)
class QCPolicyAdmin(PortalModelAdmin):
    list_display = ("name", "aql", "inspection_level", "require_review", "score_field", "min_score", "seed")
    list_filter = ("require_review", "inspection_level")
    search_fields = ("name", "description")
