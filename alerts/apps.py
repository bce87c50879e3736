from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class AlertsConfig(AppConfig):
    name = "alerts"
    verbose_name = _("Alerts")

    def ready(self):
        from dataflare_portal.core import registry

        from .services import run_event_fan_out
        from .ui import banner_items, overview_panel

        registry.register_banner_provider(banner_items)
        registry.register_overview_panel(20, overview_panel)
        registry.register_run_event(run_event_fan_out)
        from .tasks import evaluate_duty, send_notifications_duty

        registry.register_duty("alerts.evaluate", evaluate_duty, _("alert evaluation"))
        registry.register_duty("alerts.send_notifications", send_notifications_duty, _("notification delivery"))
