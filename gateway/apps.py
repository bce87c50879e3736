from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class GatewayConfig(AppConfig):
    name = "gateway"
    verbose_name = _("Gateway")

    def ready(self):
        from dataflare_portal.core.registry import register_operator_permissions
        from metrics.selectors import register_gateway_key_namer

        from .selectors import gateway_key_names

        register_gateway_key_namer(gateway_key_names)

        # The gateway's in-process caches (gateway/runtime.py) drop what changed in this process at once.
        from django.db.models.signals import m2m_changed, post_delete, post_save

        from catalog.models import Project
        from pipelines.models import ModelConfig

        from . import runtime
        from .models import GatewayKey

        post_save.connect(runtime.on_key_saved, sender=GatewayKey, dispatch_uid="gateway-cache-key")
        post_delete.connect(runtime.on_key_saved, sender=GatewayKey, dispatch_uid="gateway-cache-key-del")
        m2m_changed.connect(
            runtime.on_key_models_changed, sender=GatewayKey.allowed_models.through, dispatch_uid="gateway-cache-m2m"
        )
        post_save.connect(runtime.on_project_saved, sender=Project, dispatch_uid="gateway-cache-project")
        post_save.connect(runtime.on_model_config_saved, sender=ModelConfig, dispatch_uid="gateway-cache-model")
        post_delete.connect(runtime.on_model_config_saved, sender=ModelConfig, dispatch_uid="gateway-cache-model-del")

        # Request-log retention runs as a periodic duty (settings.CELERY_BEAT_SCHEDULE["prune-gateway-requests"]).
        from dataflare_portal.core.registry import register_duty

        from .tasks import prune_duty

        register_duty("gateway.prune", prune_duty, _("gateway request log retention"))

        from dataflare_portal.core.config import Setting, register_setting

        register_setting(
            Setting(
                "gateway_request_retention_days",
                "int",
                30,
                _(
                    "Days the gateway's request log (one row per call) is kept; the calls' tokens stay in the "
                    "metrics under their own retention."
                ),
                label=_("Gateway request log retention (days)"),
                minimum=1,
                maximum=3650,
                group="retention",
            )
        )

        # Operators create, edit and revoke gateway keys (docs/security.md); deleting one is nobody's: a revoked
        # key keeps its usage history.
        register_operator_permissions("gateway.add_gatewaykey", "gateway.change_gatewaykey", "gateway.view_gatewaykey")
