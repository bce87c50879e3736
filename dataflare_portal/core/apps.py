from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


def _roles_sync_after_migrate(sender, **kwargs):
    """Keep the role groups' permissions current after every migrate (new models get new perms)."""
    from django.apps import apps

    # post_migrate is sent once per app and permissions are created per app: wait for the last one.
    if sender is not list(apps.get_app_configs())[-1]:
        return
    from .auth import roles_sync

    roles_sync()


def _translate_admin_boolean_icons() -> None:
    """The admin's yes/no icons say "True"/"False" to a screen reader in every language (their alt text is
    the Python value): give them words in the reader's language. Every admin caller imports the helper
    from admin_list when it renders, so replacing it there covers change lists and read-only fields."""
    from django.contrib.admin.templatetags import admin_list
    from django.templatetags.static import static
    from django.utils.html import format_html

    words = {True: _("yes"), False: _("no"), None: _("unknown")}

    def boolean_icon(field_val):
        icon = {True: "yes", False: "no", None: "unknown"}[field_val]
        return format_html('<img src="{}" alt="{}">', static(f"admin/img/icon-{icon}.svg"), words[field_val])

    admin_list._boolean_icon = boolean_icon


class CoreConfig(AppConfig):
    name = "dataflare_portal.core"
    label = "core"
    verbose_name = _("System")

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in, user_login_failed
        from django.db.models.signals import post_migrate

        from dataflare_portal.celery import tune_embedded_transport

        from . import checks  # noqa: F401  (registers system checks)
        from .auth import on_logged_in, on_login_failed

        tune_embedded_transport()
        self._liveness()
        _translate_admin_boolean_icons()
        user_login_failed.connect(on_login_failed, dispatch_uid="dataflare-login-failed")
        user_logged_in.connect(on_logged_in, dispatch_uid="dataflare-logged-in")
        post_migrate.connect(_roles_sync_after_migrate, dispatch_uid="dataflare-roles-sync")

    def _liveness(self) -> None:
        """Beat's heartbeat and the periodic duties: a setting, the workers' watcher, banner and /readyz."""
        from . import duties, registry
        from .config import Setting, register_setting
        from .health import broker_status_check

        register_setting(
            Setting(
                "scheduler_stale_seconds",
                "float",
                60.0,
                _(
                    "`celery beat` silent this long is shown as dead (readiness details, workers page, banner) "
                    "and workers run its periodic duties (reaper, rollups, alerts) until it is back."
                ),
                label=_("Scheduler dead after (s)"),
                minimum=1,
                maximum=3600,
                group="execution",
            )
        )
        duties.connect()
        registry.register_banner_provider(duties.banner_items)
        registry.register_status_check("broker", broker_status_check)
        registry.register_status_check("scheduler", duties.scheduler_status_check)
        registry.register_status_check("duties", duties.duties_status_check)
