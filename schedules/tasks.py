"""Celery wrapper of the schedule tick (its period is settings.CELERY_BEAT_SCHEDULE["run-schedules"])."""

from celery import shared_task

from dataflare_portal.core.duties import duty_run, process_name


def tick_duty() -> dict:
    """Fire due slots, start queued fires, sweep dataset triggers."""
    from .services import schedules_tick

    return schedules_tick()


# Runs under its duty's lease (core/duties.py): workers run it too while beat is silent. Slots stay exactly-once
# whoever runs it, and however many beats there are: UNIQUE (schedule, slot) is the key, not the lease.
@shared_task(name="schedules.tick", soft_time_limit=50, time_limit=60)
def tick() -> dict:
    return duty_run("schedules.tick", by=process_name("beat task"))
