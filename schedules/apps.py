from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class SchedulesConfig(AppConfig):
    name = "schedules"
    verbose_name = _("Schedules")

    def ready(self):
        from dataflare_portal.core import registry

        from .services import version_published
        from .tasks import tick_duty

        registry.register_duty("schedules.tick", tick_duty, _("schedules and dataset triggers"))
        registry.register_version_published(version_published)
        registry.register_operator_permissions(
            "schedules.add_schedule",
            "schedules.change_schedule",
            "schedules.add_datasettrigger",
            "schedules.change_datasettrigger",
        )
