"""Celery wrapper of the gateway's periodic duty (its schedule is settings.CELERY_BEAT_SCHEDULE)."""

from celery import shared_task

from dataflare_portal.core.duties import duty_run, process_name

from .services import gateway_requests_prune


def prune_duty() -> dict:
    """Delete request-log rows past the `gateway_request_retention_days` setting."""
    return {"requests": gateway_requests_prune()}


# Runs under its duty's lease (core/duties.py): workers run it too while beat is silent.
@shared_task(name="gateway.prune", soft_time_limit=1200, time_limit=1260)
def prune() -> dict:
    return duty_run("gateway.prune", by=process_name("beat task"))
