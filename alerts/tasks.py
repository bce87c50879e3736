"""Celery wrappers of the alert services (schedules are in settings.CELERY_BEAT_SCHEDULE)."""

import os
import socket
import uuid

from celery import shared_task

from .services import alerts_evaluate, notifications_send


@shared_task(name="alerts.evaluate", soft_time_limit=50, time_limit=60)
def evaluate() -> int:
    """One evaluation pass; when it queued notifications, ring the sender instead of waiting for its beat."""
    changes = alerts_evaluate()
    if changes:
        send_notifications.delay()
    return len(changes)


@shared_task(name="alerts.send_notifications", soft_time_limit=100, time_limit=120)
def send_notifications() -> dict:
    """Deliver due outbox rows; each row is claimed once, so overlapping senders are harmless."""
    worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    return notifications_send(worker=worker)
