from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class PipelinesConfig(AppConfig):
    name = "pipelines"
    verbose_name = _("Pipelines")

    def ready(self):
        # Model services (gRPC helper): shared breaker store in every worker, and their
        # recorded state in /readyz details (a component: degraded, never unready).
        from celery.signals import worker_init, worker_process_init
        from django.db.models.signals import post_delete, post_save

        from dataflare_portal.core.registry import register_status_check

        from . import model_configs
        from .models import ModelConfig

        # Every gRPC channel to a model server dials an address the SSRF guard approved (docs/security.md).
        model_configs.model_endpoint_guard_install()
        # Cache invalidation: a changed or deleted config's pooled channel is closed in this process.
        for signal in (post_save, post_delete):
            signal.connect(
                model_configs.model_config_saved_or_deleted,
                sender=ModelConfig,
                weak=False,
                dispatch_uid=f"pipelines.model_config.channel.{signal is post_save}",
            )
        # worker_init covers the solo/threads pools (tasks run in the main process); worker_process_init
        # each prefork child, which must not reuse the parent's Redis/SQLite connections.
        worker_init.connect(model_configs.on_worker_start, weak=False, dispatch_uid="pipelines.model_client.init")
        worker_process_init.connect(
            model_configs.on_worker_start, weak=False, dispatch_uid="pipelines.model_client.process_init"
        )
        register_status_check("model_services", model_configs.model_services_status)
