"""Admin actions that call the engine services; PipelineAdmin (pipelines app) may add run_pipeline_action."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from . import backfills, reruns, services


def _named(exc: ValidationError) -> str:
    """The errors with the field each names (parameters.limit: ...), as one line."""
    if hasattr(exc, "error_dict"):
        return "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items())
    return "; ".join(exc.messages)


def _each(modeladmin, request, queryset, fn, done_message):
    ok = 0
    for obj in queryset:
        try:
            fn(obj)
            ok += 1
        except ValidationError as exc:
            modeladmin.message_user(request, f"{obj}: {_named(exc)}", messages.ERROR)
    if ok:
        modeladmin.message_user(request, done_message % {"n": ok}, messages.SUCCESS)


@admin.action(description=_("Run selected pipelines"), permissions=["change"])
def run_pipeline_action(modeladmin, request, queryset):
    """Start a run of each selected pipeline (for PipelineAdmin.actions)."""
    for pipeline in queryset:
        try:
            run = services.run_start(pipeline=pipeline, actor=request.user)
        except ValidationError as exc:
            modeladmin.message_user(request, f"{pipeline}: {_named(exc)}", messages.ERROR)
            continue
        url = reverse("tasks:run-detail", args=[run.pk])
        modeladmin.message_user(
            request, format_html(gettext('Started {} — <a href="{}">follow it</a>.'), run, url), messages.SUCCESS
        )


@admin.action(description=_("Run these tasks again"), permissions=["change"])
def run_task_again_action(modeladmin, request, queryset):
    """Start a new run of each selected task (same pipeline, input and parameters)."""
    _each(
        modeladmin,
        request,
        queryset.select_related("pipeline"),
        lambda task: services.run_start(
            pipeline=task.pipeline,
            actor=request.user,
            input_dataset=task.input_dataset,
            parameters=task.parameters,
            task=task,
        ),
        gettext("Started %(n)d run(s)."),
    )


@admin.action(description=_("Cancel selected runs"), permissions=["change"])
def run_cancel_action(modeladmin, request, queryset):
    _each(
        modeladmin,
        request,
        queryset,
        lambda run: services.run_cancel(run=run, actor=request.user),
        gettext("Cancelling %(n)d run(s)."),
    )


@admin.action(description=_("Retry failed stages of selected runs"), permissions=["change"])
def run_retry_action(modeladmin, request, queryset):
    _each(
        modeladmin,
        request,
        queryset,
        lambda run: services.run_retry(run=run, actor=request.user),
        gettext("Retrying %(n)d run(s)."),
    )


@admin.action(description=_("Resume selected runs from their checkpoint"), permissions=["change"])
def run_resume_action(modeladmin, request, queryset):
    _each(
        modeladmin,
        request,
        queryset,
        lambda run: services.run_resume(run=run, actor=request.user),
        gettext("Resumed %(n)d run(s)."),
    )


class RerunForm(forms.Form):
    stage = forms.CharField(
        label=_("start from stage"),
        max_length=50,
        help_text=_("The stages before it are reused from the run's checkpoints, not redone."),
    )


@admin.action(description=_("Re-run selected runs from a stage"), permissions=["change"])
def run_rerun_action(modeladmin, request, queryset):
    """Ask for the stage, then start a re-run of each selected finished run from it."""
    runs = list(queryset.select_related("pipeline"))
    form = RerunForm(request.POST if "apply" in request.POST else None)
    if form.is_bound and form.is_valid():
        for run in runs:
            try:
                new = reruns.run_rerun_from_stage(run=run, stage=form.cleaned_data["stage"], actor=request.user)
            except ValidationError as exc:
                modeladmin.message_user(request, f"{run}: {_named(exc)}", messages.ERROR)
                continue
            url = reverse("tasks:run-detail", args=[new.pk])
            modeladmin.message_user(
                request, format_html(gettext('Started {} — <a href="{}">follow it</a>.'), new, url), messages.SUCCESS
            )
        return None
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": _("Re-run from a stage"),
        "form": form,
        "runs": [(run, [s["key"] for s in (run.pipeline_snapshot.get("stages") or [])]) for run in runs],
        "opts": modeladmin.model._meta,
        "action": "run_rerun_action",
        "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
    }
    return TemplateResponse(request, "tasks/run_rerun.html", context)


@admin.action(description=_("Reprocess the quarantined records of selected runs"), permissions=["change"])
def run_reprocess_quarantined_action(modeladmin, request, queryset):
    """A new run per selected finished run on the records it quarantined (they must come from one stage)."""
    _each(
        modeladmin,
        request,
        queryset.select_related("pipeline"),
        lambda run: reruns.run_reprocess_quarantined(run=run, actor=request.user),
        gettext("Reprocessing the quarantined records of %(n)d run(s)."),
    )


class BackfillForm(forms.Form):
    versions = forms.CharField(
        label=_("versions"),
        max_length=2000,
        help_text=_("Version numbers of the input dataset, separated by commas (e.g. 3, 4, 7)."),
    )

    first_record = forms.IntegerField(
        label=_("first record"),
        required=False,
        help_text=_("Counted from 1, as lines of a file: 1 is the first record. Empty: from the first."),
    )
    last_record = forms.IntegerField(
        label=_("last record"),
        required=False,
        help_text=_("Counted from 1 and included: 1 to 100 reads 100 records. Empty: to the last."),
    )
    template = forms.ModelChoiceField(
        label=_("template version"),
        queryset=None,
        required=False,
        help_text=_("Run the stages of another version of the pipeline's template; the pipeline is not changed."),
    )

    def __init__(self, *args, pipeline=None, **kwargs):
        super().__init__(*args, **kwargs)
        field = self.fields["template"]
        field.queryset = backfills.template_versions(pipeline).order_by("-version")
        field.label_from_instance = lambda t: f"{t.name} v{t.version}"
        current = pipeline.template
        field.empty_label = (
            gettext("the current version (%(t)s)") % {"t": f"{current.name} v{current.version}"}
            if current is not None
            else gettext("the pipeline's stages")
        )

    def clean_versions(self):
        try:
            numbers = [int(part) for part in self.cleaned_data["versions"].replace(" ", "").split(",") if part]
        except ValueError:
            raise ValidationError(_("Enter version numbers separated by commas.")) from None
        if not numbers or min(numbers) < 1:
            raise ValidationError(_("Enter version numbers separated by commas."))
        return numbers


@admin.action(description=_("Backfill over chosen input versions (with a cost preview)"), permissions=["change"])
def run_backfill_action(modeladmin, request, queryset):
    """Ask for versions, show the cost preview, start the runs once the operator confirms (for PipelineAdmin)."""
    pipelines = list(queryset[:2])
    if len(pipelines) != 1:
        modeladmin.message_user(request, gettext("Select exactly one pipeline to backfill."), messages.ERROR)
        return None
    pipeline = pipelines[0]
    form = BackfillForm(request.POST if "apply" in request.POST else None, pipeline=pipeline)
    preview = None
    if form.is_bound and form.is_valid():
        chosen = {
            "pipeline": pipeline,
            "versions": form.cleaned_data["versions"],
            "first_record": form.cleaned_data["first_record"],
            "last_record": form.cleaned_data["last_record"],
            "template": form.cleaned_data["template"],
        }
        try:
            preview = backfills.backfill_preview(**chosen)
            if "confirm" in request.POST and "repreview" not in request.POST:
                runs = backfills.backfill_start(**chosen, actor=request.user)
                modeladmin.message_user(
                    request, gettext("Started %(n)d backfill run(s).") % {"n": len(runs)}, messages.SUCCESS
                )
                return None
        except ValidationError as exc:
            # Each message under the field it names (first_record, template, ...); the rest under versions.
            named = exc.message_dict if hasattr(exc, "error_dict") else {"versions": exc.messages}
            for field, errors in named.items():
                form.add_error(field if field in form.fields else "versions", " ".join(errors))
            preview = None
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": _("Backfill %(pipeline)s") % {"pipeline": pipeline},
        "form": form,
        "pipeline": pipeline,
        "preview": preview,
        "opts": modeladmin.model._meta,
        "action": "run_backfill_action",
        "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
    }
    return TemplateResponse(request, "tasks/backfill.html", context)
