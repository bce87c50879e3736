from rest_framework import serializers

from ..models import NAME_RE, WasmModule


class WasmModuleSerializer(serializers.ModelSerializer):
    uploaded_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = WasmModule
        fields = [
            "id",
            "name",
            "version",
            "sha256",
            "size",
            "exports",
            "imports",
            "description",
            "uploaded_by",
            "created_at",
        ]
        read_only_fields = fields


class WasmModuleUploadSerializer(serializers.Serializer):
    """Input of an upload: the module's name, its bytes as the multipart `file`, an optional description."""

    name = serializers.RegexField(NAME_RE, max_length=100)
    file = serializers.FileField()
    description = serializers.CharField(required=False, allow_blank=True, default="")
