"""Pipeline services: audited saves that version the template, import/export, validation."""

from __future__ import annotations

from django.db import transaction
from django.utils.translation import gettext as _

from catalog.models import Project
from dataflare_portal.core.models import AuditAction
from dataflare_portal.core.services import audit_record, object_delete, object_save

from .models import Pipeline, PipelineStage, PipelineTemplate
from .templates_io import (
    ImportPlan,
    TemplateInputError,
    pipeline_template_sync,
    template_diff,
    template_export_body,
    template_import,
    template_parse,
)
from .validation import TemplateValidationFailed, ValidationReport, pipeline_validate

__all__ = [
    "ImportPlan",
    "TemplateInputError",
    "TemplateValidationFailed",
    "pipeline_check",
    "pipeline_save",
    "stage_delete",
    "stage_save",
    "template_export",
    "template_import_text",
    "template_versions_diff",
]


def pipeline_save(*, actor, pipeline: Pipeline) -> Pipeline:
    """Validate and save a pipeline (audited), then record its shape as a template version if it changed."""
    with transaction.atomic():
        object_save(actor=actor, instance=pipeline)
        pipeline_template_sync(pipeline=pipeline, actor=actor)
    return pipeline


def stage_save(*, actor, stage: PipelineStage) -> PipelineStage:
    """Validate and save a stage (audited); the pipeline gets a new template version when its shape changed."""
    with transaction.atomic():
        object_save(actor=actor, instance=stage)
        pipeline_template_sync(pipeline=stage.pipeline, actor=actor)
    return stage


def stage_delete(*, actor, stage: PipelineStage) -> None:
    """Delete a stage (audited) and version the pipeline's new shape."""
    pipeline = stage.pipeline
    with transaction.atomic():
        object_delete(actor=actor, instance=stage)
        pipeline_template_sync(pipeline=pipeline, actor=actor)


def pipeline_check(*, pipeline: Pipeline, probe: bool = True) -> ValidationReport:
    """Validate a pipeline before it runs (read-only: nothing is written)."""
    return pipeline_validate(pipeline, probe=probe)


def template_export(*, pipeline: Pipeline, actor) -> tuple[dict, PipelineTemplate]:
    """The pipeline's template JSON, stored as a version when it changed; the export is audited."""
    with transaction.atomic():
        template = pipeline_template_sync(pipeline=pipeline, actor=actor)
        audit_record(
            actor=actor,
            action=AuditAction.EXPORT,
            instance=pipeline,
            message=_("Exported as template %(name)s v%(v)d.") % {"name": template.name, "v": template.version},
        )
    return template_export_body(pipeline), template


def template_import_text(
    *, raw: bytes | str, actor, dry_run: bool = False, project: Project | None = None, probe: bool = False
) -> ImportPlan:
    """Parse an untrusted template body and import it (all or nothing; dry_run writes nothing).

    Raises TemplateInputError (400/413: malformed or unbounded input) or TemplateValidationFailed (400).
    """
    body = template_parse(raw)
    return template_import(body=body, actor=actor, dry_run=dry_run, project=project, probe=probe)


def template_versions_diff(*, before: PipelineTemplate, after: PipelineTemplate) -> dict:
    """Structural diff between two stored template versions."""
    return template_diff(before.body, after.body)
