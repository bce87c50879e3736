"""Celery wrappers of the metrics services (schedules are in settings.CELERY_BEAT_SCHEDULE)."""

from celery import shared_task

from .services import metrics_prune, metrics_rollup


@shared_task(name="metrics.rollup", soft_time_limit=120, time_limit=150)
def rollup() -> int:
    """Roll raw events up to now; the watermark lock makes an overlapping second run wait, then no-op."""
    return metrics_rollup().rows


@shared_task(name="metrics.prune", soft_time_limit=1200, time_limit=1260)
def prune() -> dict:
    """Apply raw-event and minute-rollup retention."""
    return vars(metrics_prune())
