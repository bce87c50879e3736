"""Every system setting has a test of its effect (issue 13): this index names it, and fails when a setting is
added to the registry without one, or when a named test is renamed or removed."""

import ast
from pathlib import Path

from django.conf import settings

from dataflare_portal.core.config import registry

# setting -> the test that changes it and sees the behaviour change ("path::function").
EFFECT_TESTS = {
    "dashboard_refresh_seconds": "metrics/tests/test_settings_effect.py::test_the_dashboard_refreshes_at_the_setting",
    "history_default_window": "metrics/tests/test_settings_effect.py::test_the_dashboard_opens_with_the_default_range",
    "raw_retention_days": "metrics/tests/test_settings_effect.py::test_a_prune_keeps_raw_events_for_the_raw_retention",
    "minute_rollup_retention_days": (
        "metrics/tests/test_settings_effect.py::test_a_prune_keeps_minute_rollups_for_the_minute_retention"
    ),
    "hour_rollup_retention_days": (
        "metrics/tests/test_rollup.py::test_it_compacts_hours_past_the_hour_horizon_into_their_days"
    ),
    "alert_default_window_minutes": (
        "alerts/tests/test_settings_effect.py::test_a_new_rule_starts_with_the_default_window"
    ),
    "alert_default_cooldown_minutes": (
        "alerts/tests/test_settings_effect.py::test_the_cooldown_holds_back_flapping_notifications"
    ),
    "alert_error_rate_warning_pct": (
        "alerts/tests/test_settings_effect.py::test_a_failure_rate_rule_without_thresholds_takes_the_percent_settings"
    ),
    "alert_error_rate_critical_pct": (
        "alerts/tests/test_settings_effect.py::test_a_failure_rate_rule_without_thresholds_takes_the_percent_settings"
    ),
    "model_endpoint_default": (
        "pipelines/tests/test_settings_effect.py::test_a_new_model_config_starts_with_the_default_endpoint_and_deadline"
    ),
    "model_timeout_seconds": (
        "pipelines/tests/test_settings_effect.py::test_a_new_model_config_starts_with_the_default_endpoint_and_deadline"
    ),
    "batch_size_default": (
        "pipelines/tests/test_settings_effect.py::test_a_new_pipeline_and_an_import_without_batch_size_take_the_default"
    ),
    "auth_mode": "dataflare_portal/core/tests/test_auth.py::test_admin_refuses_users_without_a_role",
    "engine_lease_seconds": (
        "tasks/tests/test_settings_effect.py::"
        "test_a_claim_holds_its_batch_for_the_lease_and_the_reaper_takes_it_back_after"
    ),
    "engine_crash_budget": "tasks/tests/test_settings_effect.py::test_a_batch_crashes_the_run_after_the_crash_budget",
    "engine_resend_after_seconds": (
        "tasks/tests/test_settings_effect.py::test_a_queued_batch_nobody_picked_up_is_sent_again_after_the_setting"
    ),
    "worker_heartbeat_seconds": (
        "tasks/tests/test_settings_effect.py::test_a_worker_is_dead_after_three_silent_heartbeat_intervals"
    ),
    "gateway_request_retention_days": (
        "gateway/tests/test_hot_path.py::test_the_request_log_is_pruned_past_its_retention_by_the_periodic_duty"
    ),
    "workspace_retention_days": (
        "tasks/tests/test_retention.py::test_it_prunes_old_finished_workspaces_and_keeps_what_is_needed"
    ),
    "download_cache_retention_days": (
        "tasks/tests/test_retention.py::test_downloads_unused_for_the_retention_are_pruned"
    ),
    "scheduler_stale_seconds": (
        "tasks/tests/test_settings_effect.py::test_the_scheduler_is_shown_dead_after_the_stale_setting"
    ),
}


def test_every_setting_has_a_test_of_its_effect():
    assert sorted(EFFECT_TESTS) == sorted(registry), "add the new setting's effect test to EFFECT_TESTS"
    root = Path(settings.BASE_DIR)
    for key, node in EFFECT_TESTS.items():
        path, name = node.split("::")
        tree = ast.parse((root / path).read_text(encoding="utf-8"))
        functions = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
        assert name in functions, f"{key}: {node} does not exist"
        # The test sets the setting (by key, or AUTH_MODE through the local_auth fixture).
        source = ast.unparse(functions[name])
        assert key in source or (key == "auth_mode" and "local_auth" in source), f"{key}: {node} never sets it"
