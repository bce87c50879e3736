"""Backfills: run a pipeline over chosen published versions of its input dataset, after a cost preview.

The preview says how many records the slice holds and how many tokens it should cost, estimated from the
recent finished runs of the template version the pipeline runs now (tokens per input record). A backfill
starts one run per version through `run_start`, each reading exactly that version (like a dataset
trigger), with `trigger = {"kind": "backfill", ...}` in its lineage.
"""

from __future__ import annotations

from django.db import transaction
from django.db.models import Sum
from django.utils.translation import gettext as _

from catalog.choices import DatasetVersionStatus
from catalog.models import DatasetVersion

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


def backfill_preview(*, pipeline, versions: list[int]) -> dict:
    """Records in the slice and the tokens it should cost, from the recent runs of the pipeline's template version."""
    chosen = _versions(pipeline, versions)
    records = sum(v.record_count for v in chosen)
    template = pipeline.template
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
        "versions": [{"id": v.pk, "version": v.version, "records": v.record_count} for v in chosen],
        "records": records,
        "template": (
            {"id": template.pk, "name": template.name, "version": template.version} if template is not None else None
        ),
        "history_runs": len(recent),
        "tokens_per_record": round(per_record, 3) if per_record is not None else None,
        "estimated_tokens": round(per_record * records) if per_record is not None else None,
    }


def backfill_start(*, pipeline, versions: list[int], actor, parameters: dict | None = None) -> list[TaskRun]:
    """Start one run per chosen version (each validated like any run); returns the runs in version order."""
    preview = backfill_preview(pipeline=pipeline, versions=versions)
    chosen = _versions(pipeline, versions)
    trigger = {
        "kind": "backfill",
        "versions": [v.version for v in chosen],
        "estimated_tokens": preview["estimated_tokens"],
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
            )
            for v in chosen
        ]
