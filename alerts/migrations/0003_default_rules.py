"""Default alert rules shipped with the portal (editable in the admin; docs/alerts.md explains each)."""

from django.db import migrations

DEFAULT_RULES = [
    {
        "name": "High failure rate",
        "kind": "failure_rate",
        "group_by": "pipeline",
        "warning_threshold": 0.05,
        "critical_threshold": 0.2,
        "window_minutes": 15,
        "min_samples": 50,
        "description": "Share of failed records, batches or model calls per pipeline over 15 minutes "
        "(the worst of the three); judged once the window holds 50 of them.",
    },
    {
        "name": "Throughput drop",
        "kind": "throughput_drop",
        "group_by": "pipeline",
        "warning_threshold": 0.5,
        "critical_threshold": 0.8,
        "window_minutes": 30,
        "min_samples": 100,
        "description": "Records out in the last 30 minutes against the 30 before, per pipeline with an active run.",
    },
    {
        "name": "Slow model calls (p95)",
        "kind": "latency_p95",
        "group_by": "model_version",
        "warning_threshold": 2000,
        "critical_threshold": 5000,
        "window_minutes": 15,
        "min_samples": 20,
        "description": "p95 latency (ms) of model calls per model version over 15 minutes.",
    },
    {
        "name": "Run failed",
        "kind": "run_failed",
        "critical_threshold": 1,
        "window_minutes": 1440,
        "description": "A run ended failed (after its final retry) or crashed in the last day; one alert per run.",
    },
    {
        "name": "Run stuck",
        "kind": "run_stuck",
        "warning_threshold": 30,
        "critical_threshold": 90,
        "window_minutes": 15,
        "description": "An active run made no progress (run, stage or batch change) for 30 / 90 minutes.",
    },
    {
        "name": "Model service breaker open",
        "kind": "breaker_open",
        "warning_threshold": 0,
        "critical_threshold": 5,
        "window_minutes": 5,
        "description": "A model service's circuit breaker is open: warning at once, critical after 5 minutes.",
    },
    {
        "name": "Stale rollups",
        "kind": "stale_data",
        "warning_threshold": 5,
        "critical_threshold": 15,
        "window_minutes": 15,
        "description": "Raw events waiting longer than 5 / 15 minutes to be rolled up: the dashboard is behind.",
    },
    {
        "name": "Daily token budget per project",
        "kind": "token_budget",
        "enabled": False,
        "group_by": "project",
        "warning_threshold": 0.8,
        "critical_threshold": 1.0,
        "window_minutes": 1440,
        "budget_tokens": 5_000_000,
        "budget_period": "day",
        "description": "Tokens used today per project against 5M: warning at 80%, critical at 100%. "
        "Disabled until you set a budget that fits; turn on 'pause new runs on breach' to stop spending.",
    },
]


def create_defaults(apps, schema_editor):
    AlertRule = apps.get_model("alerts", "AlertRule")
    for spec in DEFAULT_RULES:
        AlertRule.objects.get_or_create(name=spec["name"], defaults=spec)


def remove_defaults(apps, schema_editor):
    AlertRule = apps.get_model("alerts", "AlertRule")
    AlertRule.objects.filter(name__in=[r["name"] for r in DEFAULT_RULES], alerts__isnull=True).delete()


class Migration(migrations.Migration):
    dependencies = [("alerts", "0002_rules_scope_events_outbox")]

    operations = [migrations.RunPython(create_defaults, remove_defaults)]
