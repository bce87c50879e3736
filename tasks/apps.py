from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class TasksConfig(AppConfig):
    name = "tasks"
    verbose_name = _("Tasks")

    def ready(self):
        from dataflare_portal.core import registry
        from dataflare_portal.core.config import Setting, register_setting

        from . import heartbeat
        from .selectors import overview_panel

        for setting in (
            Setting(
                "engine_lease_seconds",
                "float",
                60.0,
                _(
                    "How long a worker's claim on a batch lasts without renewal; a dead worker's batch is "
                    "re-queued after this."
                ),
                label=_("Batch lease (s)"),
                minimum=1,
                maximum=3600,
                group="execution",
            ),
            Setting(
                "engine_crash_budget",
                "int",
                3,
                _("How many times a batch may lose its worker before the run is marked crashed."),
                label=_("Crash budget per batch"),
                minimum=1,
                maximum=100,
                group="execution",
            ),
            Setting(
                "engine_resend_after_seconds",
                "float",
                120.0,
                _("A batch queued this long without being picked up is sent again (duplicates are harmless)."),
                label=_("Re-send queued batches after (s)"),
                minimum=1,
                maximum=86400,
                group="execution",
            ),
            Setting(
                "worker_heartbeat_seconds",
                "float",
                10.0,
                _("How often workers report that they are alive; a worker silent for 3 intervals is dead."),
                label=_("Worker heartbeat interval (s)"),
                minimum=0.1,
                maximum=3600,
                group="execution",
            ),
            Setting(
                "workspace_retention_days",
                "float",
                14.0,
                _(
                    "Days a finished run's workspace (its stages' outputs) is kept: re-runs from a stage, retries "
                    "and resumes need it. A run that a re-run still needs is kept longer."
                ),
                label=_("Workspace retention (days)"),
                minimum=0.01,
                maximum=3650,
                group="retention",
            ),
            Setting(
                "download_cache_retention_days",
                "float",
                7.0,
                _("Days a file in the shared download cache of HTTP sources is kept after its last use."),
                label=_("Download cache retention (days)"),
                minimum=0.01,
                maximum=3650,
                group="retention",
            ),
        ):
            register_setting(setting)
        heartbeat.connect()
        from .services import reap

        # Beat runs it every REAPER_INTERVAL s; workers run it too while beat is silent (core/duties.py).
        registry.register_duty("tasks.reap", reap, _("reaper"))
        from .retention import workspaces_prune

        # Beat runs it hourly (settings.CELERY_BEAT_SCHEDULE["prune-workspaces"]); docs/reruns.md.
        registry.register_duty("tasks.prune_workspaces", workspaces_prune, _("workspace retention"))
        from .selectors import workers_status_check

        registry.register_status_check("workers", workers_status_check)
        registry.register_overview_panel(20, overview_panel)
        # metrics imports no tasks code, so the live "active runs" KPI card is plugged in from here.
        from metrics.selectors import register_kpi, register_stage_labeler

        from .selectors import active_runs_kpi

        register_kpi("active_runs", _("Active runs"), active_runs_kpi)
        register_stage_labeler(_stage_kind_label)


def _stage_kind_label(code: str):
    """The dashboard's name for a stage template: its stage kind's label (None for a kind no longer installed)."""
    from pipelines.stagekinds import registry

    return registry.get(code).label if code in registry else None
