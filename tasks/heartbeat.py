"""Worker heartbeats: Celery signals keep a WorkerHeartbeat row per worker fresh for the workers page."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from django.db.models import F
from django.utils import timezone

logger = logging.getLogger(__name__)

_state = {"name": None, "stop": None, "thread": None, "done": 0, "flushed_at": 0.0}


def _interval() -> float:
    from .engine import engine_setting

    return float(engine_setting("worker_heartbeat_seconds"))


def heartbeat_touch(*, name: str, queues: list[str] | None = None, done: int = 0, create: bool = True) -> None:
    """Record that a worker is alive (and how many batches its processes finished since the last touch).

    Only the worker's main process creates a missing row (create=True): a pool process finishing its
    last batch during a clean stop must not bring back the row the stop just removed.
    """
    from .models import WorkerHeartbeat

    now = timezone.now()
    updates = {"last_seen_at": now}
    if done:
        updates["batches_done"] = F("batches_done") + done
    if queues is not None:
        updates["queues"] = queues
    if not WorkerHeartbeat.objects.filter(name=name).update(**updates) and create:
        WorkerHeartbeat.objects.update_or_create(
            name=name,
            defaults={
                "hostname": socket.gethostname(),
                "pid": os.getpid(),
                "queues": queues or [],
                "last_seen_at": now,
                "batches_done": done,
            },
        )


def _beat_loop(name: str, queues: list[str], stop: threading.Event) -> None:
    from django.db import connection

    try:
        while not stop.wait(_interval()):
            try:
                heartbeat_touch(name=name, queues=queues)
            except Exception:
                logger.exception("worker heartbeat failed")
    finally:
        connection.close()


def on_worker_ready(sender=None, **kwargs) -> None:
    hostname = getattr(sender, "hostname", None) or socket.gethostname()
    try:
        queues = sorted(sender.app.amqp.queues.consume_from.keys())
    except Exception:
        queues = []
    from .models import WorkerHeartbeat

    WorkerHeartbeat.objects.update_or_create(
        name=hostname,
        defaults={
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "queues": queues,
            "last_seen_at": timezone.now(),
            "started_at": timezone.now(),
        },
    )
    stop = threading.Event()
    thread = threading.Thread(target=_beat_loop, args=(hostname, queues, stop), name="df-heartbeat", daemon=True)
    _state.update(name=hostname, stop=stop, thread=thread)
    thread.start()


def on_worker_shutdown(sender=None, **kwargs) -> None:
    stop, thread = _state.get("stop"), _state.get("thread")
    if stop is not None:
        stop.set()
    if thread is not None:
        # A touch in flight when the stop began would re-create the row after the delete below.
        thread.join(timeout=10)
    if _state.get("name"):
        try:
            from .models import WorkerHeartbeat

            # A clean stop leaves no ghost on the workers page; a crash leaves a row that turns "dead".
            WorkerHeartbeat.objects.filter(name=_state["name"]).delete()
        except Exception:
            logger.exception("could not remove the worker heartbeat")


def on_task_postrun(sender=None, task=None, **kwargs) -> None:
    """In pool processes: count finished batches and flush them (with a heartbeat) every interval."""
    if getattr(task, "name", None) != "tasks.batch_execute":
        return
    _state["done"] += 1
    now = time.monotonic()
    if now - _state["flushed_at"] < _interval():
        return
    name = getattr(task.request, "hostname", None)
    if not name:
        return
    done, _state["done"], _state["flushed_at"] = _state["done"], 0, now
    try:
        heartbeat_touch(name=name, done=done, create=False)
    except Exception:
        logger.exception("worker heartbeat failed")


def connect() -> None:
    from celery import signals

    signals.worker_ready.connect(on_worker_ready, weak=False, dispatch_uid="tasks.heartbeat.ready")
    signals.worker_shutdown.connect(on_worker_shutdown, weak=False, dispatch_uid="tasks.heartbeat.shutdown")
    signals.task_postrun.connect(on_task_postrun, weak=False, dispatch_uid="tasks.heartbeat.postrun")
