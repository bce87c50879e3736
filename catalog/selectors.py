"""Catalog reads that are more than a filter: lineage walks and version lookups."""

from __future__ import annotations

from django.db.models import QuerySet

from .choices import DatasetVersionStatus
from .models import Dataset, DatasetVersion

LINEAGE_MAX_DEPTH = 10


def dataset_versions(*, dataset: Dataset) -> QuerySet[DatasetVersion]:
    """A dataset's versions, newest first."""
    return DatasetVersion.objects.filter(dataset=dataset).order_by("-version")


def dataset_latest_version(*, dataset: Dataset, readable_only: bool = True) -> DatasetVersion | None:
    """The newest (published or archived, by default) version of a dataset."""
    qs = dataset_versions(dataset=dataset)
    if readable_only:
        qs = qs.filter(status__in=DatasetVersionStatus.readable())
    return qs.first()


def _walk(version: DatasetVersion, relation: str, max_depth: int) -> list[dict]:
    # Breadth-first by level, one query per level; a cycle (never expected) cannot loop forever.
    seen = {version.pk}
    level = [version.pk]
    out: list[dict] = []
    through = DatasetVersion.parents.through
    src, dst = ("from_datasetversion_id", "to_datasetversion_id")
    if relation == "children":
        src, dst = dst, src
    for depth in range(1, max_depth + 1):
        ids = set(through.objects.filter(**{f"{src}__in": level}).values_list(dst, flat=True)) - seen
        if not ids:
            break
        rows = DatasetVersion.objects.filter(pk__in=ids).select_related("dataset").order_by("dataset__name", "version")
        out.extend({"depth": depth, "version": row} for row in rows)
        seen |= ids
        level = list(ids)
    return out


def version_ancestors(*, version: DatasetVersion, max_depth: int = LINEAGE_MAX_DEPTH) -> list[dict]:
    """Versions this one was derived from, nearest first: [{"depth", "version"}]."""
    return _walk(version, "parents", max_depth)


def version_descendants(*, version: DatasetVersion, max_depth: int = LINEAGE_MAX_DEPTH) -> list[dict]:
    """Versions derived from this one, nearest first: [{"depth", "version"}]."""
    return _walk(version, "children", max_depth)


def versions_by_run(*, run_id) -> QuerySet[DatasetVersion]:
    """The versions a run produced."""
    return DatasetVersion.objects.filter(run_id=run_id).select_related("dataset")
