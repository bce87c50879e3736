"""FilterSets of the pipelines app: one per model, shared by the API, list pages and selectors."""

import django_filters

from .choices import PipelineStatus
from .models import Pipeline, PipelineStage, PipelineTemplate, QCPolicy


class PipelineFilterSet(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(choices=PipelineStatus.choices)
    project = django_filters.CharFilter(field_name="project__slug")
    project_id = django_filters.NumberFilter(field_name="project_id")

    class Meta:
        model = Pipeline
        fields = ["status", "project", "project_id", "input_dataset", "output_dataset", "template", "qc_policy"]


class PipelineStageFilterSet(django_filters.FilterSet):
    class Meta:
        model = PipelineStage
        fields = ["pipeline", "kind", "key", "model_config"]


class PipelineTemplateFilterSet(django_filters.FilterSet):
    since = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")

    class Meta:
        model = PipelineTemplate
        fields = ["name", "version", "project", "checksum"]


class QCPolicyFilterSet(django_filters.FilterSet):
    class Meta:
        model = QCPolicy
        fields = ["name", "require_review", "inspection_level"]
