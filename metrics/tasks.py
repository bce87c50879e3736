"""Celery wrappers of the metrics services (schedules are in settings.CELERY_BEAT_SCHEDULE)."""

import logging

from celery import shared_task

from .prewarm import metrics_prewarm
from .services import metrics_prune, metrics_rollup

logger = logging.getLogger(__name__)


@shared_task(name="metrics.rollup", soft_time_limit=120, time_limit=150)
def rollup() -> int:
    """Roll raw events up to now, then pre-warm the default views (the lock makes an overlapping run wait)."""
    rows = metrics_rollup().rows
    try:
        metrics_prewarm()
    except Exception:  # a cold cache is slower, not wrong: the rollup itself succeeded
        logger.exception("metrics cache prewarm failed")
    return rows


@shared_task(name="metrics.prune", soft_time_limit=1200, time_limit=1260)
def prune() -> dict:
    """Apply raw-event and minute-rollup retention."""
    return vars(metrics_prune())
