"""Reads of the pipelines app that are more than a filter: template versions with their runs and metrics."""

from __future__ import annotations

from django.db.models import Count, Max, Q, QuerySet, Sum

from .models import Pipeline, PipelineTemplate
from .stagekinds import registry

# Run statuses as stored by the tasks app; read through the reverse relation so pipelines imports no tasks code.
_SUCCEEDED = "succeeded"
_FAILED = ("failed", "crashed")
RUNS_SHOWN = 20


def template_versions(name: str) -> QuerySet[PipelineTemplate]:
    """All versions of one template, newest first."""
    return PipelineTemplate.objects.filter(name=name).select_related("created_by").order_by("-version")


def template_version_stats(template_ids: list[int]) -> dict[int, dict]:
    """Headline numbers per template version: runs, succeeded, failed, success rate, records out, last run."""
    rows = (
        PipelineTemplate.objects.filter(pk__in=template_ids)
        .annotate(
            n_runs=Count("runs"),
            n_succeeded=Count("runs", filter=Q(runs__status=_SUCCEEDED)),
            n_failed=Count("runs", filter=Q(runs__status__in=_FAILED)),
            out=Sum("runs__records_out"),
            last_run=Max("runs__created_at"),
        )
        .values("pk", "n_runs", "n_succeeded", "n_failed", "out", "last_run")
    )
    stats = {}
    for row in rows:
        finished = row["n_succeeded"] + row["n_failed"]
        stats[row["pk"]] = {
            "runs": row["n_runs"],
            "succeeded": row["n_succeeded"],
            "failed": row["n_failed"],
            "success_rate": (row["n_succeeded"] / finished) if finished else None,
            "records_out": row["out"] or 0,
            "last_run_at": row["last_run"],
        }
    return stats


def template_recent_runs(template: PipelineTemplate, limit: int = RUNS_SHOWN):
    """The latest runs produced by one template version (bounded)."""
    return template.runs.select_related("task", "pipeline").order_by("-created_at")[:limit]


def pipelines_with_stage_counts() -> QuerySet[Pipeline]:
    """Pipelines for lists: project, datasets and template joined, stage count annotated."""
    return Pipeline.objects.select_related(
        "project", "input_dataset", "output_dataset", "template", "qc_policy"
    ).annotate(stage_count=Count("stages"))


def stage_diagram_nodes(stages, counts: dict | None = None) -> list[dict]:
    """The boxes of a pipeline diagram: each stage with its kind's label, and (on a run) its counts.

    `stages` are PipelineStage rows (or anything with key, name, kind); `counts` maps a stage key to
    {"status", "status_label", "records_in", "records_out", "records_filtered", "records_failed", "url"}.
    """
    nodes = []
    for stage in stages:
        kind = registry.get(stage.kind) if stage.kind in registry else None
        nodes.append(
            {
                "key": stage.key,
                "name": getattr(stage, "name", "") or stage.key,
                "kind": stage.kind,
                "kind_label": str(kind.label) if kind else stage.kind,
                "group": "marker" if kind and kind.is_marker else (str(kind.group) if kind else "unknown"),
                "counts": (counts or {}).get(stage.key),
            }
        )
    return nodes
