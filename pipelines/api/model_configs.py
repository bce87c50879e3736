"""API of model configs: audited CRUD and the `test` action (health check + one sample inference)."""

from __future__ import annotations

from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.response import Response

from dataflare_portal.core.api.base import PortalModelSerializer, PortalModelViewSet
from dataflare_portal.core.netguard import EndpointRefused

from ..choices import ModelProtocol
from ..model_configs import DEFAULT_SAMPLE_TEXT, model_config_endpoint_check, model_config_test
from ..models import ModelConfig
from ..stagekinds.inference import PromptError, prompt_fields


class ModelConfigSerializer(PortalModelSerializer):
    """A model config; the last test's time and result are read-only (the `test` action writes them).

    `api_key` is write-only (stored encrypted, never returned): omit it to keep the stored key, send "" to remove
    it; `has_api_key` says whether one is stored.
    """

    api_key = serializers.CharField(
        write_only=True,
        required=False,
        allow_blank=True,
        trim_whitespace=True,
        max_length=4096,
        style={"input_type": "password"},
        help_text=gettext_lazy(
            "OpenAI-compatible only. Stored encrypted, never returned. Omit to keep the stored key; empty to remove it."
        ),
    )
    has_api_key = serializers.SerializerMethodField(help_text=gettext_lazy("Whether an API key is stored."))

    class Meta:
        model = ModelConfig
        fields = [
            "id",
            "name",
            "protocol",
            "endpoint",
            "openai_api",
            "api_key",
            "has_api_key",
            "model_name",
            "model_version",
            "tls",
            "tls_ca_cert",
            "parameters",
            "deadline_ms",
            "max_attempts",
            "backoff_base_ms",
            "backoff_max_ms",
            "max_in_flight",
            "batch_size",
            "breaker_failure_threshold",
            "breaker_reset_seconds",
            "last_tested_at",
            "last_test_result",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["last_tested_at", "last_test_result", "created_at", "updated_at"]

    def get_has_api_key(self, obj) -> bool:
        return bool(obj.api_key_ciphertext)

    def validate(self, attrs):
        attrs = super().validate(attrs)
        instance = self.instance
        protocol = attrs.get("protocol", instance.protocol if instance else ModelProtocol.KSERVE_V2)
        endpoint = attrs.get("endpoint", instance.endpoint if instance else None)
        if endpoint is not None and ("endpoint" in attrs or "protocol" in attrs):
            try:
                attrs["endpoint"] = model_config_endpoint_check(endpoint, protocol)
            except EndpointRefused as exc:
                raise serializers.ValidationError({"endpoint": [str(exc)]})
        if protocol == ModelProtocol.KSERVE_V2 and attrs.get("api_key"):
            raise serializers.ValidationError({"api_key": [_("A KServe V2 model config takes no API key.")]})
        return attrs

    def validate_parameters(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError(_("Parameters must be a JSON object."))
        template = value.get("prompt_template")
        if template is not None:
            if not isinstance(template, str):
                raise serializers.ValidationError(_("prompt_template must be a string."))
            try:
                prompt_fields(template)
            except PromptError as exc:
                raise serializers.ValidationError(f"$.parameters.prompt_template: {exc}")
        return value


class ModelConfigBriefSerializer(serializers.ModelSerializer):
    class Meta:
        model = ModelConfig
        fields = ["id", "name", "endpoint", "model_name", "model_version"]


class ModelConfigTestSerializer(serializers.Serializer):
    sample_text = serializers.CharField(
        required=False,
        max_length=10_000,
        trim_whitespace=True,
        help_text=gettext_lazy("Text for the sample inference (the prompt template, if any, is applied)."),
    )


class ModelConfigViewSet(PortalModelViewSet):
    """Model configs; POST …/test/ checks health and runs one sample inference (operator)."""

    queryset = ModelConfig.objects.all().order_by("name")
    serializer_class = ModelConfigSerializer
    brief_serializer_class = ModelConfigBriefSerializer
    filterset_fields = ["name", "protocol", "endpoint", "model_name", "model_version", "tls"]
    search_fields = ["name", "endpoint", "model_name"]
    ordering_fields = ["name", "model_name", "last_tested_at", "created_at"]
    operator_actions = ["test"]

    def _save(self, serializer):
        # The key is not a column: it is encrypted into api_key_ciphertext, and only OpenAI configs keep one.
        api_key = serializer.validated_data.pop("api_key", None)
        instance = serializer.instance or ModelConfig()
        protocol = serializer.validated_data.get("protocol", instance.protocol)
        if protocol == ModelProtocol.KSERVE_V2:
            instance.api_key_set(None)
        elif api_key is not None:
            instance.api_key_set(api_key)
        serializer.instance = instance
        super()._save(serializer)

    @action(detail=True, methods=["post"], serializer_class=ModelConfigTestSerializer)
    def test(self, request, pk=None):
        """Health check plus one sample inference; returns latency and the answer, and stores the result."""
        config = self.get_object()
        data = ModelConfigTestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        result = model_config_test(
            config=config,
            actor=request.user,
            sample_text=data.validated_data.get("sample_text") or DEFAULT_SAMPLE_TEXT,
        )
        return Response(result)
