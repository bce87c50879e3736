"""Serializers of the pipelines API."""

from rest_framework import serializers

from dataflare_portal.core.api.base import PortalModelSerializer

from ..models import Pipeline, PipelineStage, PipelineTemplate, QCPolicy


class PipelineStageSerializer(PortalModelSerializer):
    class Meta:
        model = PipelineStage
        fields = ["id", "pipeline", "key", "name", "kind", "position", "config", "model_config"]


class PipelineStageInlineSerializer(serializers.ModelSerializer):
    class Meta:
        model = PipelineStage
        fields = ["id", "key", "name", "kind", "position", "config", "model_config"]
        read_only_fields = fields


class PipelineSerializer(PortalModelSerializer):
    stages = PipelineStageInlineSerializer(many=True, read_only=True)

    class Meta:
        model = Pipeline
        fields = [
            "id",
            "project",
            "name",
            "description",
            "status",
            "input_dataset",
            "output_dataset",
            "template",
            "qc_policy",
            "batch_size",
            "max_batch_attempts",
            "runs_paused",
            "paused_reason",
            "parameters_schema",
            "stages",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["template", "runs_paused", "paused_reason", "created_at", "updated_at"]


class PipelineBriefSerializer(serializers.ModelSerializer):
    class Meta:
        model = Pipeline
        fields = ["id", "project", "name", "status", "template"]


class PipelineTemplateSerializer(serializers.ModelSerializer):
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)

    class Meta:
        model = PipelineTemplate
        fields = [
            "id",
            "name",
            "version",
            "schema_version",
            "description",
            "checksum",
            "project",
            "created_at",
            "created_by",
            "body",
        ]
        read_only_fields = fields


class PipelineTemplateBriefSerializer(serializers.ModelSerializer):
    class Meta:
        model = PipelineTemplate
        fields = ["id", "name", "version", "checksum", "created_at"]
        read_only_fields = fields


class TemplateVersionStatsSerializer(serializers.Serializer):
    """Headline numbers of one template version's runs."""

    runs = serializers.IntegerField()
    succeeded = serializers.IntegerField()
    failed = serializers.IntegerField()
    success_rate = serializers.FloatField(allow_null=True)
    records_out = serializers.IntegerField()
    last_run_at = serializers.DateTimeField(allow_null=True)


class TemplateVersionSerializer(PipelineTemplateBriefSerializer):
    """One row of GET templates/{id}/versions/: the version and its runs' headline numbers."""

    stats = TemplateVersionStatsSerializer(read_only=True)

    class Meta(PipelineTemplateBriefSerializer.Meta):
        fields = [*PipelineTemplateBriefSerializer.Meta.fields, "stats"]
        read_only_fields = fields


class QCPolicySerializer(PortalModelSerializer):
    class Meta:
        model = QCPolicy
        fields = [
            "id",
            "name",
            "description",
            "rules",
            "score_field",
            "min_score",
            "aql",
            "inspection_level",
            "sample_size",
            "acceptance_number",
            "seed",
            "require_review",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]


class DiffQuerySerializer(serializers.Serializer):
    against = serializers.PrimaryKeyRelatedField(queryset=PipelineTemplate.objects.all())
