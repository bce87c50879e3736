"""One FilterSet per catalog model: used by the API, list pages and selectors."""

import django_filters
from django.db.models import Q

from .choices import ConnectionStatus, DatasetVersionStatus
from .connectors.registry import format_choices, kind_choices
from .models import Dataset, DatasetVersion, DataSource, Project


class _SearchMixin(django_filters.FilterSet):
    q = django_filters.CharFilter(method="search", label="Search")
    search_fields: tuple[str, ...] = ("name",)

    def search(self, queryset, name, value):
        value = value.strip()
        if not value:
            return queryset
        cond = Q()
        for field in self.search_fields:
            cond |= Q(**{f"{field}__icontains": value})
        return queryset.filter(cond)


class ProjectFilterSet(_SearchMixin):
    search_fields = ("name", "slug", "description")

    class Meta:
        model = Project
        fields = ["slug", "runs_paused"]


class DataSourceFilterSet(_SearchMixin):
    kind = django_filters.MultipleChoiceFilter(choices=kind_choices)
    status = django_filters.MultipleChoiceFilter(choices=ConnectionStatus.choices)
    project = django_filters.NumberFilter(field_name="project_id")
    search_fields = ("name", "description")

    class Meta:
        model = DataSource
        fields = ["project", "kind", "status"]


class DatasetFilterSet(_SearchMixin):
    format = django_filters.MultipleChoiceFilter(choices=format_choices)
    project = django_filters.NumberFilter(field_name="project_id")
    source = django_filters.NumberFilter(field_name="source_id")
    profiled = django_filters.BooleanFilter(field_name="profiled_at", lookup_expr="isnull", exclude=True)
    search_fields = ("name", "description", "location")

    class Meta:
        model = Dataset
        fields = ["project", "source", "format"]


class DatasetVersionFilterSet(django_filters.FilterSet):
    dataset = django_filters.NumberFilter(field_name="dataset_id")
    project = django_filters.NumberFilter(field_name="dataset__project_id")
    status = django_filters.MultipleChoiceFilter(choices=DatasetVersionStatus.choices)
    run_id = django_filters.UUIDFilter()
    published_after = django_filters.IsoDateTimeFilter(field_name="published_at", lookup_expr="gte")
    published_before = django_filters.IsoDateTimeFilter(field_name="published_at", lookup_expr="lt")

    class Meta:
        model = DatasetVersion
        fields = ["dataset", "status", "run_id", "version"]
