"""Admin of gateway keys (the secret shown once, on creation) and the per-key request log."""

from __future__ import annotations

from django.contrib import admin, messages
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from dataflare_portal.core.admin_base import BigTableAdmin, PortalModelAdmin, status_badge

from . import services
from .models import GatewayKey, GatewayRequest

STATE_LABELS = {"active": _("active"), "revoked": _("revoked"), "expired": _("expired")}
BADGE = {"active": "active", "revoked": "failed", "expired": "cancelled"}


@admin.register(GatewayKey)
class GatewayKeyAdmin(PortalModelAdmin):
    list_display = ["name", "project", "prefix_shown", "state_badge", "expires_at", "last_used_at", "token_budget"]
    list_filter = ["project", "store_prompts", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix"]
    filter_horizontal = ["allowed_models"]
    readonly_fields = ["prefix_shown", "state_badge", "revoked_at", "last_used_at", "created_at", "created_by"]
    fields = [
        "project",
        "name",
        "prefix_shown",
        "state_badge",
        "allowed_models",
        "store_prompts",
        "token_budget",
        "budget_period",
        "expires_at",
        "revoked_at",
        "last_used_at",
        "created_at",
        "created_by",
    ]
    actions = ["revoke_keys"]

    @admin.display(description=_("key prefix"))
    def prefix_shown(self, obj):
        return f"dfk_{obj.prefix}_…" if obj and obj.prefix else "—"

    @admin.display(description=_("state"))
    def state_badge(self, obj):
        if obj is None or obj.pk is None:
            return "—"
        state = obj.state()
        return status_badge(BADGE[state], STATE_LABELS[state])

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None:
            fields.append("project")  # a key never moves to another project
        return fields

    def has_delete_permission(self, request, obj=None):
        return False  # revoke instead: a key's usage history stays attached to it

    def save_model(self, request, obj, form, change):
        if not change:
            key, text = services.key_create(
                actor=request.user,
                project=form.cleaned_data["project"],
                name=form.cleaned_data["name"],
                allowed_models=form.cleaned_data.get("allowed_models") or [],
                store_prompts=form.cleaned_data.get("store_prompts", False),
                token_budget=form.cleaned_data.get("token_budget"),
                budget_period=form.cleaned_data.get("budget_period"),
                expires_at=form.cleaned_data.get("expires_at"),
            )
            obj.pk = key.pk
            request._gateway_key_secret = (key, text)
            return
        fields = {
            n: form.cleaned_data[n] for n in ("name", "store_prompts", "token_budget", "budget_period", "expires_at")
        }
        services.key_update(
            actor=request.user, key=obj, allowed_models=form.cleaned_data.get("allowed_models"), **fields
        )

    def save_related(self, request, form, formsets, change):
        # allowed_models is saved by the service (inside its audited transaction).
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)

    def response_add(self, request, obj, post_url_continue=None):
        key, text = request._gateway_key_secret
        # Rendered in this answer, never put in a message or a cookie: the secret crosses the wire once.
        response = TemplateResponse(
            request,
            "gateway/key_created.html",
            {
                **self.admin_site.each_context(request),
                "key": key,
                "secret": text,
                "base_url": request.build_absolute_uri("/v1"),
                "continue_url": reverse("admin:gateway_gatewaykey_change", args=[key.pk]),
                "opts": self.model._meta,
                "title": _("Gateway key"),
            },
        )
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description=_("Revoke selected keys"), permissions=["change"])
    def revoke_keys(self, request, queryset):
        revoked = 0
        for key in queryset:
            if key.revoked_at is None:
                services.key_revoke(actor=request.user, key=key)
                revoked += 1
        self.message_user(
            request,
            ngettext("%(n)d key revoked.", "%(n)d keys revoked.", revoked) % {"n": revoked},
            messages.SUCCESS,
        )


@admin.register(GatewayRequest)
class GatewayRequestAdmin(BigTableAdmin):
    list_display = [
        "ts",
        "key",
        "endpoint",
        "model",
        "stream",
        "http_status",
        "status_code",
        "prompt_tokens",
        "completion_tokens",
        "latency_ms",
    ]  # noqa: E501
    list_filter = ["endpoint", "stream", "http_status", "status_code"]
    search_fields = ["model", "request_id", "key__name", "key__prefix"]
    date_hierarchy = None
    list_select_related = ["key"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
