"""Backfills: run a pipeline over a chosen slice of its input dataset, after a cost preview.

The slice is one or more published versions, optionally only a record range of each (`first_record` to
`last_record`, 1-based and inclusive, as an operator counts lines). The run may execute another version of
the pipeline's template than the current one (`template`): the run snapshots that version's stages, the
pipeline stays as it is. The preview says how many records the slice holds and how many tokens it should
cost, estimated from the recent finished runs of the template version that will run (tokens per input
record; unknown without history). A backfill starts one run per version through `run_start`, each
reading exactly that version (like a dataset trigger), with `trigger = {"kind": "backfill", ...}` in its
lineage.
"""

from __future__ import annotations

from django.db import transaction
from django.db.models import Q, Sum
from django.utils.translation import gettext as _

from catalog.choices import DatasetVersionStatus
from catalog.models import DatasetVersion
from pipelines.models import PipelineTemplate

from .choices import RunStatus
from .models import TaskRun
from .services import RunRefused, run_start

# How many recent finished runs of the template version the estimate reads.
HISTORY_RUNS = 20


def _versions(pipeline, numbers: list[int]) -> list[DatasetVersion]:
    """The published versions of the pipeline's input dataset with these numbers, or RunRefused naming the bad ones."""
    dataset = pipeline.input_dataset
    if dataset is None:
        raise RunRefused({"pipeline": [_("Pipeline %(p)s has no input dataset to backfill.") % {"p": pipeline}]})
    if not numbers:
        raise RunRefused({"versions": [_("Choose at least one version of %(d)s.") % {"d": dataset}]})
    found = {
        v.version: v
        for v in DatasetVersion.objects.filter(
            dataset=dataset, version__in=numbers, status=DatasetVersionStatus.PUBLISHED
        )
    }
    missing = [n for n in numbers if n not in found]
    if missing:
        raise RunRefused(
            {
                "versions": [
                    _("Dataset %(d)s has no published version %(v)s.")
                    % {"d": dataset, "v": ", ".join(str(n) for n in missing)}
                ]
            },
            code="unknown_version",
        )
    return [found[n] for n in dict.fromkeys(numbers)]


def template_versions(pipeline):
    """The versions of the pipeline's template (same template name, this project or none), newest first."""
    name = pipeline.template.name if pipeline.template_id else pipeline.name
    return PipelineTemplate.objects.filter(name=name).filter(Q(project=pipeline.project_id) | Q(project__isnull=True))


def _template(pipeline, template) -> PipelineTemplate | None:
    """The template version the backfill runs: the pipeline's current one, or a chosen version of its template."""
    if template is None or template == "":
        return pipeline.template
    pk = template.pk if isinstance(template, PipelineTemplate) else template
    found = template_versions(pipeline).filter(pk=pk).first()
    if found is None:
        raise RunRefused(
            {
                "template": [
                    _("Template version %(t)s is not a version of the template of pipeline %(p)s.")
                    % {"t": template, "p": pipeline}
                ]
            },
            code="foreign_template",
        )
    return found


def _range(first, last, chosen: list[DatasetVersion]) -> dict | None:
    """The record range {"first", "last"} (1-based, inclusive; None: all), or RunRefused naming the field."""
    if first is None and last is None:
        return None
    errors: dict[str, list[str]] = {}
    for field, value in (("first_record", first), ("last_record", last)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            message = _("Records are counted from 1: give a whole number of 1 or more (not %(v)s).")
            errors[field] = [message % {"v": value}]
    if errors:
        raise RunRefused(errors, code="invalid_range")
    first = first or 1
    if last is not None and last < first:
        raise RunRefused(
            {
                "last_record": [
                    _("The last record (%(last)d) comes before the first record (%(first)d).")
                    % {"last": last, "first": first}
                ]
            },
            code="invalid_range",
        )
    for version in chosen:
        count = version.record_count
        for field, value in (("first_record", first), ("last_record", last)):
            if value is not None and value > count:
                raise RunRefused(
                    {
                        field: [
                            _("Version %(v)d of %(d)s holds %(n)d records: record %(r)d is beyond its end.")
                            % {"v": version.version, "d": version.dataset, "n": count, "r": value}
                        ]
                    },
                    code="invalid_range",
                )
    return {"first": first, "last": last}


def _slice_records(version: DatasetVersion, span: dict | None) -> int:
    if span is None:
        return version.record_count
    last = version.record_count if span["last"] is None else min(span["last"], version.record_count)
    return max(0, last - span["first"] + 1)


def backfill_preview(*, pipeline, versions: list[int], first_record=None, last_record=None, template=None) -> dict:
    """Records in the slice and the tokens it should cost, from the recent runs of the template version it runs."""
    chosen = _versions(pipeline, versions)
    span = _range(first_record, last_record, chosen)
    records = sum(_slice_records(v, span) for v in chosen)
    template = _template(pipeline, template)
    history = TaskRun.objects.filter(pipeline=pipeline, status=RunStatus.SUCCEEDED, records_in__gt=0)
    history = history.filter(template=template) if template is not None else history.filter(template__isnull=True)
    recent = list(history.order_by("-finished_at").values_list("pk", flat=True)[:HISTORY_RUNS])
    sums = TaskRun.objects.filter(pk__in=recent).aggregate(
        records=Sum("records_in"), prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens")
    )
    per_record = None
    if recent and sums["records"]:
        per_record = ((sums["prompt"] or 0) + (sums["completion"] or 0)) / sums["records"]
    return {
        "pipeline": {"id": pipeline.pk, "name": pipeline.name},
        "dataset": {"id": pipeline.input_dataset_id, "name": pipeline.input_dataset.name},
        "versions": [
            {"id": v.pk, "version": v.version, "records": v.record_count, "slice_records": _slice_records(v, span)}
            for v in chosen
        ],
        "range": span,
        "records": records,
        "template": (
            {
                "id": template.pk,
                "name": template.name,
                "version": template.version,
                "current": template.pk == pipeline.template_id,
            }
            if template is not None
            else None
        ),
        "history_runs": len(recent),
        "tokens_per_record": round(per_record, 3) if per_record is not None else None,
        "estimated_tokens": round(per_record * records) if per_record is not None else None,
    }


def backfill_start(
    *,
    pipeline,
    versions: list[int],
    actor,
    parameters: dict | None = None,
    first_record=None,
    last_record=None,
    template=None,
) -> list[TaskRun]:
    """Start one run per chosen version (each validated like any run); returns the runs in version order."""
    preview = backfill_preview(
        pipeline=pipeline, versions=versions, first_record=first_record, last_record=last_record, template=template
    )
    chosen = _versions(pipeline, versions)
    span = preview["range"]
    chosen_template = _template(pipeline, template)
    override = chosen_template if chosen_template is not None and chosen_template != pipeline.template else None
    trigger = {
        "kind": "backfill",
        "versions": [v.version for v in chosen],
        "estimated_tokens": preview["estimated_tokens"],
        **({"records": span} if span else {}),
        **({"template": preview["template"]} if override is not None else {}),
    }
    # All or none: a version refused (paused scope, bad parameters) starts no run of the backfill.
    with transaction.atomic():
        return [
            run_start(
                pipeline=pipeline,
                actor=actor,
                input_version=v,
                parameters=parameters,
                trigger={**trigger, "version": {"id": v.pk, "version": v.version}},
                template=override,
                input_range=span,
            )
            for v in chosen
        ]
