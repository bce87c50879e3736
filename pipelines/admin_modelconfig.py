"""Admin of model configs: endpoint/model/version with the last test's badge, a "Test" action and button."""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseNotAllowed
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from dataflare_portal.core.admin_base import PortalModelAdmin, status_badge
from dataflare_portal.core.netguard import EndpointRefused
from dataflare_portal.core.services import ROLE_ADMIN, ROLE_OPERATOR, user_role

from .choices import ModelProtocol, OpenAIApi
from .model_configs import DEFAULT_SAMPLE_TEXT, model_config_endpoint_check, model_config_test
from .models import ModelConfig
from .stagekinds.inference import PromptError, prompt_fields


def test_badge(result: dict | None, tested_at=None):
    """Badge of a stored test result: passed / failed / never tested."""
    if not tested_at or not result:
        return status_badge("unknown", gettext("never tested"))
    if result.get("ok"):
        return status_badge("ok", gettext("passed"))
    return status_badge("failed", gettext("failed"))


def test_summary(result: dict) -> str:
    """One line for messages: latency and the answer, or the error."""
    inference = result.get("inference") or {}
    health = result.get("health") or {}
    if result.get("ok"):
        answer = json.dumps(inference.get("output"), ensure_ascii=False)
        if len(answer) > 300:
            answer = answer[:300] + "…"
        return gettext("passed: health %(h).1f ms, inference %(i).1f ms; answer: %(a)s") % {
            "h": health.get("latency_ms") or 0,
            "i": inference.get("latency_ms") or 0,
            "a": answer,
        }
    error = health.get("error") or inference.get("error") or ""
    if not error and not health.get("model_ready"):
        error = gettext("the model is not ready")
    return gettext("failed: %(error)s") % {"error": error}


class ModelConfigForm(forms.ModelForm):
    """Checks what the model cannot: a dialable, allowed endpoint and a usable prompt template.

    The API key is a write-only password field: never rendered back, blank keeps the stored one.
    """

    api_key = forms.CharField(
        label=_("API key"),
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text=_(
            "OpenAI-compatible only. Stored encrypted and never shown again. Leave blank to keep the stored key."
        ),
    )
    clear_api_key = forms.BooleanField(label=_("Remove the stored API key"), required=False)

    class Meta:
        model = ModelConfig
        fields = [
            "name",
            "protocol",
            "endpoint",
            "openai_api",
            "model_name",
            "model_version",
            "parameters",
            "tls",
            "tls_ca_cert",
            "batch_size",
            "deadline_ms",
            "max_attempts",
            "backoff_base_ms",
            "backoff_max_ms",
            "max_in_flight",
            "breaker_failure_threshold",
            "breaker_reset_seconds",
        ]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # A form posted without them (scripts written before protocols existed) means KServe V2, chat.
        for name in ("protocol", "openai_api"):
            if name in self.fields:
                self.fields[name].required = False

    def clean(self):
        data = super().clean()
        data["protocol"] = protocol = data.get("protocol") or ModelProtocol.KSERVE_V2
        data["openai_api"] = data.get("openai_api") or OpenAIApi.CHAT
        if protocol and data.get("endpoint"):
            try:
                data["endpoint"] = model_config_endpoint_check(data["endpoint"], protocol)
            except (EndpointRefused, ValueError) as exc:
                self.add_error("endpoint", str(exc))
        if protocol == ModelProtocol.KSERVE_V2 and data.get("api_key"):
            self.add_error("api_key", gettext("A KServe V2 model config takes no API key."))
        return data

    def save(self, commit=True):
        config = super().save(commit=False)
        if self.cleaned_data.get("clear_api_key") or self.cleaned_data.get("protocol") == ModelProtocol.KSERVE_V2:
            config.api_key_set(None)
        elif self.cleaned_data.get("api_key"):
            config.api_key_set(self.cleaned_data["api_key"])
        if commit:
            config.save()
            self._save_m2m()
        return config

    def clean_parameters(self):
        value = self.cleaned_data.get("parameters")
        if value in (None, ""):
            return {}
        if not isinstance(value, dict):
            raise forms.ValidationError(gettext("Parameters must be a JSON object."))
        template = value.get("prompt_template")
        if template is not None:
            try:
                prompt_fields(str(template))
            except PromptError as exc:
                raise forms.ValidationError(f"$.parameters.prompt_template: {exc}")
        return value


@admin.register(ModelConfig)
class ModelConfigAdmin(PortalModelAdmin):
    """Model services over gRPC; the test checks health and runs one sample inference."""

    form = ModelConfigForm
    list_display = [
        "name",
        "protocol",
        "endpoint",
        "model_name",
        "model_version",
        "batch_size",
        "max_in_flight",
        "last_test_column",
        "last_tested_at",
    ]
    list_filter = ["protocol", "model_name", "tls"]
    search_fields = ["name", "endpoint", "model_name", "model_version"]
    readonly_fields = [
        "api_key_state",
        "last_test_column",
        "last_tested_at",
        "last_test_pretty",
        "created_at",
        "updated_at",
    ]
    actions = ["test_configs"]
    change_form_template = "pipelines/modelconfig_change_form.html"
    fieldsets = [
        (None, {"fields": ["name", "protocol", "endpoint", "model_name", "model_version", "parameters"]}),
        (
            _("OpenAI-compatible"),
            {
                "fields": ["openai_api", "api_key", "clear_api_key", "api_key_state"],
                "classes": ["df-openai"],
                "description": _("Used when the protocol is OpenAI-compatible."),
            },
        ),
        (_("TLS"), {"fields": ["tls", "tls_ca_cert"], "classes": ["collapse"]}),
        (
            _("Calls and resilience"),
            {
                "fields": [
                    "batch_size",
                    "deadline_ms",
                    "max_attempts",
                    "backoff_base_ms",
                    "backoff_max_ms",
                    "max_in_flight",
                    "breaker_failure_threshold",
                    "breaker_reset_seconds",
                ]
            },
        ),
        (_("Last test"), {"fields": ["last_test_column", "last_tested_at", "last_test_pretty"]}),
        (_("History"), {"fields": ["created_at", "updated_at"]}),
    ]

    @admin.display(description=_("stored API key"))
    def api_key_state(self, obj):
        return gettext("Stored (encrypted)") if obj and obj.api_key_ciphertext else gettext("None")

    @admin.display(description=_("last test"))
    def last_test_column(self, obj):
        return test_badge(obj.last_test_result, obj.last_tested_at)

    @admin.display(description=_("last test result"))
    def last_test_pretty(self, obj):
        if not obj.last_test_result:
            return "-"
        return format_html(
            "<pre class='df-json'>{}</pre>", json.dumps(obj.last_test_result, ensure_ascii=False, indent=2)
        )

    # -- permissions: testing is an operator action (it calls the server; it changes no settings)

    def has_test_permission(self, request) -> bool:
        return user_role(request.user) in (ROLE_OPERATOR, ROLE_ADMIN)

    @admin.action(description=_("Test selected model configs (health + one sample inference)"), permissions=["test"])
    def test_configs(self, request, queryset):
        for config in queryset[:20]:
            result = model_config_test(config=config, actor=request.user)
            self.message_user(
                request,
                f"{config.name}: {test_summary(result)}",
                messages.SUCCESS if result.get("ok") else messages.ERROR,
            )

    # -- the change page's "Test" button

    def get_urls(self):
        return [
            path(
                "<path:object_id>/test/",
                self.admin_site.admin_view(self.test_view),
                name="pipelines_modelconfig_test",
            ),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {**(extra_context or {}), "can_test": self.has_test_permission(request)}
        return super().change_view(request, object_id, form_url, extra_context)

    def test_view(self, request, object_id):
        """GET: the last result and a form; POST: run the test now and show latency and the answer."""
        config = get_object_or_404(ModelConfig, pk=object_id)
        if not self.has_view_permission(request, config):
            raise PermissionDenied
        if request.method not in ("GET", "POST"):
            return HttpResponseNotAllowed(["GET", "POST"])
        sample_text = DEFAULT_SAMPLE_TEXT
        result = config.last_test_result or None
        ran = False
        if request.method == "POST":
            if not self.has_test_permission(request):
                raise PermissionDenied
            sample_text = (request.POST.get("sample_text") or "").strip()[:10_000] or DEFAULT_SAMPLE_TEXT
            result = model_config_test(config=config, actor=request.user, sample_text=sample_text)
            config.refresh_from_db()
            ran = True
        context = {
            **self.admin_site.each_context(request),
            "title": gettext("Test model config %(name)s") % {"name": config.name},
            "opts": self.model._meta,
            "original": config,
            "config": config,
            "result": result,
            "result_json": json.dumps(result, ensure_ascii=False, indent=2) if result else "",
            "output_json": json.dumps((result or {}).get("inference", {}).get("output"), ensure_ascii=False, indent=2),
            "badge": test_badge(result, config.last_tested_at),
            "summary": test_summary(result) if result else "",
            "sample_text": sample_text,
            "ran": ran,
            "can_test": self.has_test_permission(request),
            "change_url": reverse("admin:pipelines_modelconfig_change", args=[config.pk]),
        }
        return TemplateResponse(request, "pipelines/modelconfig_test.html", context)
