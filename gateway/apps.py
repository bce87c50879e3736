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

        # Operators create, edit and revoke gateway keys (docs/security.md); deleting one is nobody's: a revoked
        # key keeps its usage history.
        register_operator_permissions("gateway.add_gatewaykey", "gateway.change_gatewaykey", "gateway.view_gatewaykey")
