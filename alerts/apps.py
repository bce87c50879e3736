from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class AlertsConfig(AppConfig):
    name = "alerts"
    verbose_name = _("Alerts")

    def ready(self):
        from dataflare_portal.core import registry

        from .ui import banner_items, overview_panel

        registry.register_banner_provider(banner_items)
        registry.register_overview_panel(20, overview_panel)
