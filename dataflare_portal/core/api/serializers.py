from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from ..models import AuditLogEntry


@extend_schema_field({"anyOf": [{"type": "number"}, {"type": "boolean"}, {"type": "string"}]})
class ConfigValueField(serializers.JSONField):
    """A setting's value: integer, number, boolean or text depending on the setting's type."""


class ConfigSettingSerializer(serializers.Serializer):
    """One setting with its effective value and where that value comes from."""

    key = serializers.CharField(read_only=True)
    label = serializers.CharField(read_only=True)
    description = serializers.CharField(read_only=True)
    group = serializers.CharField(read_only=True)
    type = serializers.ChoiceField(choices=["int", "float", "bool", "str", "choice", "hostport"], read_only=True)
    value = ConfigValueField(read_only=True)
    default = ConfigValueField(read_only=True)
    source = serializers.ChoiceField(choices=["default", "env", "file", "database"], read_only=True)
    read_only = serializers.BooleanField(read_only=True)
    choices = serializers.ListField(child=serializers.CharField(), read_only=True)
    minimum = serializers.FloatField(read_only=True, allow_null=True)
    maximum = serializers.FloatField(read_only=True, allow_null=True)

    def to_representation(self, row):
        setting = row["setting"]
        return {
            "key": setting.key,
            "label": str(setting.label or setting.key),
            "description": str(setting.description),
            "group": setting.group,
            "type": setting.type,
            "value": row["value"],
            "default": setting.default,
            "source": row["source"],
            "read_only": setting.read_only,
            "choices": list(setting.choices),
            "minimum": setting.minimum,
            "maximum": setting.maximum,
        }


class ConfigWriteSerializer(serializers.Serializer):
    """A new value for one setting; null removes the database override."""

    value = ConfigValueField(allow_null=True, help_text=_("The new value; null removes the override."))


class TokenRequestSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=4096, style={"input_type": "password"}, trim_whitespace=False)


class TokenSerializer(serializers.Serializer):
    token = serializers.CharField()


class AuditLogEntrySerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditLogEntry
        fields = [
            "id",
            "timestamp",
            "actor",
            "actor_name",
            "action",
            "object_type",
            "object_id",
            "object_repr",
            "before",
            "after",
            "message",
            "request_id",
        ]
