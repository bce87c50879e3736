"""Catalog API serializers: full and brief shapes; credentials are write-only and never returned."""

from django.utils.translation import gettext_lazy as _
from rest_framework import serializers

from dataflare_portal.core.api.base import PortalModelSerializer

from ..models import Dataset, DatasetVersion, DataSource, Project


class ProjectSerializer(PortalModelSerializer):
    class Meta:
        model = Project
        fields = ["id", "name", "slug", "description", "runs_paused", "paused_reason", "created_at", "updated_at"]
        read_only_fields = ["runs_paused", "paused_reason", "created_at", "updated_at"]


class ProjectBriefSerializer(serializers.ModelSerializer):
    class Meta:
        model = Project
        fields = ["id", "name", "slug"]


class DataSourceSerializer(PortalModelSerializer):
    password = serializers.CharField(
        write_only=True,
        required=False,
        allow_blank=True,
        trim_whitespace=False,
        style={"input_type": "password"},
        help_text=_("Stored encrypted, never returned. Omit to keep the stored one; empty to clear it."),
    )
    secret = serializers.DictField(
        child=serializers.CharField(allow_blank=True, trim_whitespace=False),
        write_only=True,
        required=False,
        help_text=_(
            "Credentials by name (e.g. access_key_id and secret_access_key for S3): stored encrypted, never "
            "returned; replaces the stored set. Omit to keep it; {} to clear it."
        ),
    )
    has_secret = serializers.SerializerMethodField(help_text=_("Whether credentials are stored."))

    class Meta:
        model = DataSource
        fields = [
            "id",
            "project",
            "name",
            "kind",
            "description",
            "config",
            "password",
            "secret",
            "has_secret",
            "status",
            "last_checked_at",
            "last_error",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["status", "last_checked_at", "last_error", "created_at", "updated_at"]

    def get_has_secret(self, obj) -> bool:
        return bool(obj.secret_ciphertext)

    def validate(self, attrs):
        password = attrs.pop("password", None)
        secret = attrs.pop("secret", None)
        attrs = super().validate(attrs)
        if password is not None:
            attrs["password"] = password
        if secret is not None:
            attrs["secret"] = secret
        return attrs


class DataSourceBriefSerializer(serializers.ModelSerializer):
    class Meta:
        model = DataSource
        fields = ["id", "name", "kind", "status"]


class DatasetSerializer(PortalModelSerializer):
    class Meta:
        model = Dataset
        fields = [
            "id",
            "project",
            "source",
            "name",
            "description",
            "format",
            "location",
            "options",
            "schema",
            "row_count",
            "profiled_at",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["schema", "row_count", "profiled_at", "created_at", "updated_at"]


class DatasetBriefSerializer(serializers.ModelSerializer):
    class Meta:
        model = Dataset
        fields = ["id", "name", "format", "row_count"]


class DatasetVersionSerializer(serializers.ModelSerializer):
    parents = serializers.PrimaryKeyRelatedField(many=True, read_only=True)
    children = serializers.PrimaryKeyRelatedField(many=True, read_only=True)

    class Meta:
        model = DatasetVersion
        fields = [
            "id",
            "dataset",
            "version",
            "status",
            "location",
            "archive_location",
            "checksum",
            "record_count",
            "size_bytes",
            "parents",
            "children",
            "run_id",
            "template_version_id",
            "model_versions",
            "qc_decision",
            "lineage",
            "created_at",
            "published_at",
            "archived_at",
        ]
        read_only_fields = fields


class DatasetVersionBriefSerializer(serializers.ModelSerializer):
    class Meta:
        model = DatasetVersion
        fields = ["id", "dataset", "version", "status", "checksum"]


class ConnectionResultSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    detail = serializers.CharField()
    latency_ms = serializers.FloatField()
    status = serializers.CharField()
    last_checked_at = serializers.DateTimeField()


class FieldSchemaSerializer(serializers.Serializer):
    name = serializers.CharField()
    type = serializers.ChoiceField(choices=["int", "float", "bool", "string", "json"])
    nullable = serializers.BooleanField()


class ProfileSerializer(serializers.Serializer):
    schema = FieldSchemaSerializer(many=True)
    row_count = serializers.IntegerField()
    profiled_at = serializers.DateTimeField()
    preview = serializers.ListField(child=serializers.DictField())


class PreviewSerializer(serializers.Serializer):
    records = serializers.ListField(child=serializers.DictField())


class ProfileRequestSerializer(serializers.Serializer):
    sample_size = serializers.IntegerField(min_value=1, max_value=10_000, default=200)
    preview_limit = serializers.IntegerField(min_value=1, max_value=200, default=20)


class DiffQuerySerializer(serializers.Serializer):
    against = serializers.IntegerField(min_value=1, help_text=_("The id of the version to compare with."))
    key = serializers.CharField(
        required=False, allow_blank=True, max_length=200, help_text=_("The key field (default: the dataset's key).")
    )
    sample = serializers.IntegerField(min_value=0, max_value=50, default=5)


class DiffSerializer(serializers.Serializer):
    left = serializers.IntegerField()
    right = serializers.IntegerField()
    key = serializers.CharField()
    left_records = serializers.IntegerField()
    right_records = serializers.IntegerField()
    added = serializers.IntegerField()
    removed = serializers.IntegerField()
    changed = serializers.IntegerField()
    unchanged = serializers.IntegerField()
    duplicate_keys = serializers.DictField(child=serializers.IntegerField())
    samples = serializers.DictField()


class PreviewQuerySerializer(serializers.Serializer):
    limit = serializers.IntegerField(min_value=1, max_value=200, default=20)


class UploadRequestSerializer(serializers.Serializer):
    """A file to upload into a files data source, and the dataset it becomes."""

    file = serializers.FileField(help_text=_("A .jsonl, .csv or .parquet file (streamed to disk; size limited)."))
    name = serializers.CharField(max_length=100, help_text=_("The new dataset's name (unique in the project)."))
    location = serializers.CharField(
        max_length=500,
        required=False,
        allow_blank=True,
        help_text=_("Path of the file below the source's folder; the uploaded file's name when left out."),
    )
    description = serializers.CharField(required=False, allow_blank=True, default="")


class UploadResultSerializer(serializers.Serializer):
    dataset = DatasetSerializer()
    version = DatasetVersionSerializer()
