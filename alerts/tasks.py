"""Celery wrappers of the alert services (schedules are in settings.CELERY_BEAT_SCHEDULE)."""

import os
import socket
import uuid

from celery import shared_task

from dataflare_portal.core.duties import duty_run, process_name

from .services import alerts_evaluate, notifications_send


def evaluate_duty() -> int:
    """One evaluation pass; returns how many alerts changed state."""
    return len(alerts_evaluate())


def send_notifications_duty() -> dict:
    """Deliver due outbox rows; each row is claimed once, so overlapping senders are harmless."""
    worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    return notifications_send(worker=worker)


# Each runs under its duty's lease (core/duties.py): workers run them too while beat is silent.
@shared_task(name="alerts.evaluate", soft_time_limit=50, time_limit=60)
def evaluate() -> dict:
    """One evaluation pass; when it queued notifications, ring the sender instead of waiting for its beat."""
    done = duty_run("alerts.evaluate", by=process_name("beat task"))
    if done.get("result"):
        send_notifications.delay()
    return done


@shared_task(name="alerts.send_notifications", soft_time_limit=100, time_limit=120)
def send_notifications() -> dict:
    return duty_run("alerts.send_notifications", by=process_name("beat task"))
