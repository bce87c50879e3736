"""Admin of the core models: system settings (read-mostly) and the audit log (read-only)."""

import json

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from .admin_base import BigTableAdmin, PortalModelAdmin, status_badge
from .auth import login_throttled
from .models import AuditLogEntry, OidcIdentity, SystemConfig
from .signin import make_login, make_logout

admin.site.site_header = _("DataFlare Portal")
admin.site.site_title = _("DataFlare Portal")
admin.site.index_title = _("Operations overview")
# The admin is mounted at "/", so "View site" would point at the page the operator is on.
admin.site.site_url = None
# The login form draws on the same per-address budget as the token endpoint (issue 11); AUTH_MODE=oidc
# puts the provider's sign-in, the break-glass form and single logout in front (core/signin.py).
admin.site.login = login_throttled(make_login(admin.site.login))
admin.site.logout = make_logout(admin.site.logout)


def _json_preview(value, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class SystemConfigForm(forms.ModelForm):
    """Validates an override against the setting's type and bounds (core/config.py registry)."""

    class Meta:
        model = SystemConfig
        fields = ("key", "value")

    def clean(self):
        from .config import ConfigError, registry

        data = super().clean()
        key = data.get("key") or self.instance.key
        setting = registry.get(key)
        if setting is None:
            raise ValidationError({"key": _("Unknown setting %(key)s.") % {"key": key}})
        if setting.read_only:
            raise ValidationError({"key": _("This setting is read-only here; set it in the environment.")})
        try:
            data["value"] = setting.coerce(data.get("value"))
        except ConfigError as exc:
            raise ValidationError({"value": exc.messages})
        return data


@admin.register(SystemConfig)
class SystemConfigAdmin(PortalModelAdmin):
    """Database overrides of operational settings, written through config_set so every process applies them."""

    form = SystemConfigForm
    list_display = ("key", "value_preview", "updated_at", "updated_by")
    search_fields = ("key",)
    readonly_fields = ("updated_at", "updated_by")
    fields = ("key", "value", "updated_at", "updated_by")

    @admin.display(description=_("value"))
    def value_preview(self, obj):
        return _json_preview(obj.value)

    def get_readonly_fields(self, request, obj=None):
        # The key names the setting; renaming an override would silently move it to another setting.
        return (*self.readonly_fields, "key") if obj is not None else self.readonly_fields

    def save_model(self, request, obj, form, change):
        from .config import config_set

        # config_set validates, audits and bumps the config version, so the change applies
        # in every portal process without restart (a plain save would not).
        config_set(key=obj.key, value=obj.value, actor=request.user)
        saved = SystemConfig.objects.get(key=obj.key)
        obj.pk, obj.updated_at, obj.updated_by = saved.pk, saved.updated_at, saved.updated_by

    def delete_model(self, request, obj):
        from .config import config_reset

        config_reset(key=obj.key, actor=request.user)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            self.delete_model(request, obj)


class AuditActionFilter(admin.SimpleListFilter):
    """Filter by action without a DISTINCT over the (big) audit table: the choices are fixed."""

    title = _("action")
    parameter_name = "action"

    def lookups(self, request, model_admin):
        return AuditLogEntry._meta.get_field("action").choices

    def queryset(self, request, queryset):
        return queryset.filter(action=self.value()) if self.value() else queryset


ACTION_BADGES = {
    "delete": "failed",
    "cancel": "cancelled",
    "override": "overridden",
    "create": "succeeded",
    "run": "running",
    "publish": "published",
}


@admin.register(AuditLogEntry)
class AuditLogEntryAdmin(BigTableAdmin):
    """The audit log: who did what, when, with before/after; nobody edits history."""

    list_display = ("timestamp", "actor_name", "action_badge", "object_type", "object_id", "object_repr", "request_id")
    list_filter = (AuditActionFilter,)
    search_fields = ("=actor_name", "=object_type", "=object_id", "=request_id", "object_repr")
    list_select_related = ("actor",)
    readonly_fields = (
        "timestamp",
        "actor",
        "actor_name",
        "action",
        "object_type",
        "object_id",
        "object_repr",
        "before_pretty",
        "after_pretty",
        "message",
        "request_id",
    )
    fields = readonly_fields

    @admin.display(description=_("action"), ordering="action")
    def action_badge(self, obj):
        return status_badge(ACTION_BADGES.get(obj.action, "pending"), obj.get_action_display())

    @admin.display(description=_("before"))
    def before_pretty(self, obj):
        return self._pretty(obj.before)

    @admin.display(description=_("after"))
    def after_pretty(self, obj):
        return self._pretty(obj.after)

    @staticmethod
    def _pretty(value):
        if value is None:
            return "—"
        return format_html("<pre class='df-json'>{}</pre>", json.dumps(value, ensure_ascii=False, indent=2))

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(OidcIdentity)
class OidcIdentityAdmin(PortalModelAdmin):
    """Who signed in through the OpenID Connect provider, as whom, with which role; written by sign-ins only."""

    list_display = ("subject", "issuer", "user", "role", "last_seen")
    list_filter = ("role",)
    search_fields = ("=subject", "user__username", "user__email")
    list_select_related = ("user",)
    readonly_fields = ("issuer", "subject", "user", "role", "first_seen", "last_seen")
    fields = readonly_fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
