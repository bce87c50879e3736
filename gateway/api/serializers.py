"""Gateway key and request-log serializers: the key's secret is never a field; it is returned once by create."""

from __future__ import annotations

from django.utils.translation import gettext_lazy as _
from rest_framework import serializers

from catalog.models import Project
from pipelines.models import ModelConfig

from ..choices import BudgetPeriod
from ..models import GatewayKey, GatewayRequest


class GatewayKeySerializer(serializers.ModelSerializer):
    """A key's metadata. Its secret is shown once, in the create answer's `key`, and never again."""

    project = serializers.PrimaryKeyRelatedField(queryset=Project.objects.all())
    allowed_models = serializers.SlugRelatedField(
        slug_field="name",
        queryset=ModelConfig.objects.all(),
        many=True,
        required=False,
        help_text=_("Model config names this key may call; empty means every model config."),
    )
    state = serializers.SerializerMethodField(help_text=_("active, revoked or expired"))
    budget_period = serializers.ChoiceField(choices=BudgetPeriod.choices, required=False)

    class Meta:
        model = GatewayKey
        fields = [
            "id",
            "project",
            "name",
            "prefix",
            "state",
            "allowed_models",
            "store_prompts",
            "token_budget",
            "budget_period",
            "expires_at",
            "revoked_at",
            "last_used_at",
            "created_at",
        ]
        read_only_fields = ["prefix", "revoked_at", "last_used_at", "created_at"]

    def get_state(self, obj) -> str:
        return obj.state()

    def validate_token_budget(self, value):
        if value is not None and value <= 0:
            raise serializers.ValidationError(_("A token budget must be positive (or empty for no limit)."))
        return value

    def validate(self, attrs):
        if self.instance is not None and "project" in attrs and attrs["project"] != self.instance.project:
            raise serializers.ValidationError({"project": [_("A key cannot move to another project.")]})
        return attrs


class GatewayKeyCreatedSerializer(GatewayKeySerializer):
    key = serializers.CharField(read_only=True, help_text=_("Copy this key now; it will not be shown again."))

    class Meta(GatewayKeySerializer.Meta):
        fields = [*GatewayKeySerializer.Meta.fields, "key"]


class GatewayRequestSerializer(serializers.ModelSerializer):
    key_name = serializers.CharField(source="key.name", read_only=True)
    prompt = serializers.SerializerMethodField(
        help_text=_("The request body, kept only when the key stores prompts; shown to operators and admins.")
    )

    class Meta:
        model = GatewayRequest
        fields = [
            "id",
            "ts",
            "key",
            "key_name",
            "project_id",
            "endpoint",
            "model",
            "stream",
            "http_status",
            "status_code",
            "error",
            "prompt_tokens",
            "completion_tokens",
            "latency_ms",
            "request_id",
            "prompt",
        ]

    def get_prompt(self, obj) -> dict | None:
        from django.conf import settings

        from dataflare_portal.core.services import ROLE_ADMIN, ROLE_OPERATOR, user_role

        request = self.context.get("request")
        if settings.AUTH_MODE != "none" and user_role(getattr(request, "user", None)) not in (
            ROLE_ADMIN,
            ROLE_OPERATOR,
        ):
            return None
        return obj.prompt
