"""Celery wrappers of the metrics services (schedules are in settings.CELERY_BEAT_SCHEDULE)."""

import logging

from celery import shared_task

from dataflare_portal.core.duties import duty_run, process_name

from .prewarm import metrics_prewarm
from .services import metrics_prune, metrics_rollup

logger = logging.getLogger(__name__)


def rollup_duty() -> int:
    """Roll raw events up to now, then pre-warm the default views (the lock makes an overlapping run wait)."""
    rows = metrics_rollup().rows
    try:
        metrics_prewarm()
    except Exception:  # a cold cache is slower, not wrong: the rollup itself succeeded
        logger.exception("metrics cache prewarm failed")
    return rows


def prune_duty() -> dict:
    """Apply raw-event and minute-rollup retention."""
    return vars(metrics_prune())


# Each runs under its duty's lease (core/duties.py): workers run them too while beat is silent.
@shared_task(name="metrics.rollup", soft_time_limit=120, time_limit=150)
def rollup() -> dict:
    return duty_run("metrics.rollup", by=process_name("beat task"))


@shared_task(name="metrics.prune", soft_time_limit=1200, time_limit=1260)
def prune() -> dict:
    return duty_run("metrics.prune", by=process_name("beat task"))
