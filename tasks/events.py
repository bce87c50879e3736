"""Run events for automation: one row per transition, written in the transaction that makes it true.

The engine calls `run_event_record` right after the conditional UPDATE that changed the run (and only
when it changed a row), inside the same transaction; listeners registered in the core registry (the
alerts app's webhook outbox) write their rows in that transaction too. So an event exists exactly when
its transition committed: a rolled-back transition leaves neither the event nor its deliveries, and a
transition that another process already made (the UPDATE matched nothing) records nothing.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from dataflare_portal.core import registry

from .choices import RunEventKind
from .models import RunEvent, TaskRun

logger = logging.getLogger(__name__)


def _absolute(path: str) -> str:
    base = getattr(settings, "PORTAL_BASE_URL", "") or ""
    return base.rstrip("/") + path if base else path


def _iso(value) -> str | None:
    return value.isoformat() if value else None


def run_event_payload(run: TaskRun, kind: str, at, version=None) -> dict:
    """The JSON body a subscriber receives (documented in docs/schedules.md, "Run events and webhooks")."""
    body = {
        "event": kind,
        "at": at.isoformat(),
        "run": {
            "id": str(run.pk),
            "number": run.number,
            "task_id": run.task_id,
            "project_id": run.project_id,
            "pipeline_id": run.pipeline_id,
            "pipeline": run.pipeline.name,
            "status": run.status,
            "status_code": run.status_code,
            "status_reason": run.status_reason,
            "started_at": _iso(run.started_at),
            "finished_at": _iso(run.finished_at),
            "records_in": run.records_in,
            "records_out": run.records_out,
            "records_failed": run.records_failed,
            "trigger": run.trigger or {},
            "url": _absolute(reverse("tasks:run-detail", args=[run.pk])),
        },
    }
    if version is not None:
        body["version"] = {
            "id": version.pk,
            "dataset_id": version.dataset_id,
            "version": version.version,
            "location": version.location,
            "checksum": version.checksum,
            "records": version.record_count,
            "url": _absolute(reverse("tasks:version-detail", args=[version.pk])),
        }
    return body


def run_event_record(*, run_id, kind: str, version=None, now=None) -> RunEvent:
    """Record one transition of a run and hand it to the listeners, inside the caller's transaction."""
    if kind not in RunEventKind.values:
        raise ValueError(f"unknown run event {kind!r}")
    if not transaction.get_connection().in_atomic_block:
        # Outside a transaction the event could commit while its transition does not (or the reverse).
        raise RuntimeError("run_event_record must run inside the transaction that makes the transition")
    now = now or timezone.now()
    run = TaskRun.objects.select_related("pipeline").get(pk=run_id)
    # The caller holds the run's row lock (its conditional UPDATE), so counting is race-free.
    sequence = RunEvent.objects.filter(run_id=run_id, kind=kind).count() + 1
    event = RunEvent.objects.create(
        run=run,
        project_id=run.project_id,
        kind=kind,
        sequence=sequence,
        at=now,
        payload=run_event_payload(run, kind, now, version),
    )
    for listener in list(registry.run_event_listeners):
        try:
            # A savepoint: a broken listener loses its own rows, never the engine's transition.
            with transaction.atomic():
                listener(event)
        except Exception:
            logger.exception("run-event listener %r failed for %s", listener, event)
    return event
