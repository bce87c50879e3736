"""Periodic duties: a heartbeat and a lease per duty, beat's own heartbeat, and the workers' watcher.

Beat schedules the duties (settings.CELERY_BEAT_SCHEDULE) and its scheduler records its own heartbeat
(row `scheduler`, core/beat.py). Each duty runs through `duty_run`, which takes the duty's lease with a
conditional UPDATE (one runner at a time, on SQLite and PostgreSQL alike) and records when it ran and
how it ended. Every worker's main process runs a watcher thread: while beat's heartbeat is missing or
stale, or a duty is overdue, the worker runs the due duties itself under the same lease, so a dead beat
stalls no run and no alert. The web process reads the rows to name a dead scheduler in /readyz, on the
workers page and in the banner; it needs no beat to notice.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from . import registry

logger = logging.getLogger(__name__)

__all__ = [
    "SCHEDULER",
    "duties_status",
    "duty_run",
    "scheduler_touch",
    "stale_seconds",
    "watch_once",
]

SCHEDULER = "scheduler"


def stale_seconds() -> float:
    """The `scheduler_stale_seconds` setting: beat silent this long is dead (config is memoised per version)."""
    try:
        from .config import config_get

        return float(config_get("scheduler_stale_seconds"))
    except Exception:  # the config store may be away for a moment: fall back to the default
        return 60.0


def duty_interval(name: str) -> float | None:
    """How often beat runs the duty (seconds), from the one place schedules are declared."""
    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        if entry.get("task") == name:
            schedule = entry.get("schedule")
            if isinstance(schedule, (int, float)):
                return float(schedule)
            try:
                return float(schedule.run_every.total_seconds())
            except AttributeError:
                return None
    return None


def process_name(kind: str) -> str:
    return f"{kind} {socket.gethostname()}:{os.getpid()}"


def _ensure_rows(names) -> None:
    from .models import Duty

    Duty.objects.bulk_create([Duty(name=n) for n in names], ignore_conflicts=True)


# ---- running a duty under its lease ----------------------------------------------------------------
class _LeaseRenewer:
    """Keeps a duty's lease while it runs (a long prune outlives a short lease)."""

    def __init__(self, name: str, owner: str, ttl: float):
        self.name, self.owner, self.ttl = name, owner, ttl
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"df-duty-{name}", daemon=True)

    def _loop(self) -> None:
        from django.db import connection

        from .models import Duty

        try:
            while not self.stop.wait(self.ttl / 3):
                Duty.objects.filter(name=self.name, lease_owner=self.owner).update(
                    lease_expires_at=timezone.now() + timedelta(seconds=self.ttl)
                )
        except Exception:
            logger.exception("could not renew the lease of duty %s", self.name)
        finally:
            connection.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)


def duty_run(name: str, *, by: str) -> dict:
    """Run a registered duty if nobody else is running it now; record when and how it ended.

    Returns {"ran": False} when another process holds the duty's lease, else {"ran": True, "result": ...}.
    A failing duty re-raises after recording its error.
    """
    from .models import Duty

    spec = registry.duties[name]
    ttl = max(stale_seconds(), 1.0)
    owner = f"{by}:{uuid.uuid4().hex[:8]}"
    now = timezone.now()
    _ensure_rows([name])
    taken = (
        Duty.objects.filter(name=name)
        .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now))
        .update(lease_owner=owner, lease_expires_at=now + timedelta(seconds=ttl), last_started_at=now)
    )
    if not taken:
        return {"ran": False}
    ok, error = True, ""
    try:
        with _LeaseRenewer(name, owner, ttl):
            result = spec.run()
    except BaseException as exc:
        ok, error = False, f"{type(exc).__name__}: {exc}"[:2000]
        raise
    finally:
        Duty.objects.filter(name=name, lease_owner=owner).update(
            lease_owner="",
            lease_expires_at=None,
            last_finished_at=timezone.now(),
            last_ok=ok,
            last_error=error,
            last_by=by,
        )
    return {"ran": True, "result": result}


def scheduler_touch(*, by: str) -> None:
    """Beat's heartbeat: its scheduler loop is alive."""
    from .models import Duty

    now = timezone.now()
    if not Duty.objects.filter(name=SCHEDULER).update(last_finished_at=now, last_by=by, last_ok=True):
        _ensure_rows([SCHEDULER])
        Duty.objects.filter(name=SCHEDULER).update(last_started_at=now, last_finished_at=now, last_by=by)


# ---- what is due, and the workers' watcher ------------------------------------------------------
def _due(rows: dict, now) -> list[str]:
    stale = stale_seconds()
    beat = rows.get(SCHEDULER)
    seen = beat.last_finished_at if beat is not None else None
    beat_silent = seen is None or seen < now - timedelta(seconds=stale)
    due = []
    for name in registry.duties:
        interval = duty_interval(name)
        if interval is None:
            continue
        row = rows.get(name)
        last = row.last_finished_at if row is not None else None
        age = None if last is None else (now - last).total_seconds()
        # While beat is alive the watcher steps in only for a duty overdue by the stale margin (beat's
        # messages not consumed, say); while beat is silent it keeps every duty on beat's schedule.
        if age is None or age >= interval + (0 if beat_silent else stale):
            due.append(name)
    return due


def watch_once(*, by: str, now=None) -> list[str]:
    """One watcher step: run every due duty whose lease is free; returns the names it ran."""
    from .models import Duty

    now = now or timezone.now()
    rows = {d.name: d for d in Duty.objects.all()[:100]}
    ran = []
    for name in _due(rows, now):
        try:
            if duty_run(name, by=by)["ran"]:
                ran.append(name)
        except Exception:
            logger.exception("duty %s failed in the worker's watcher", name)
    return ran


def duties_due(*, now=None) -> list[str]:
    """The duties a worker should run now (database only: the watcher thread never touches the broker)."""
    from .models import Duty

    now = now or timezone.now()
    return _due({d.name: d for d in Duty.objects.all()[:100]}, now)


def _watch_loop(stop: threading.Event, by: str) -> None:
    import subprocess
    import sys

    from django.db import connection

    try:
        while not stop.wait(max(0.2, min(5.0, stale_seconds() / 4))):
            try:
                due = duties_due()
                if not due:
                    continue
                # Duties send broker messages (the reaper re-queues batches). The worker's main process
                # must not use its broker connections from a second thread (the embedded transport's
                # session broke and took the worker down), so they run in a short-lived process.
                proc = subprocess.Popen(  # noqa: S603 - our own interpreter and manage.py, fixed arguments
                    [sys.executable, str(settings.BASE_DIR / "manage.py"), "run_duties"],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                _watcher["proc"] = proc
                try:
                    out, err = proc.communicate(timeout=max(120.0, stale_seconds() * 4))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    out, err = proc.communicate()
                finally:
                    _watcher["proc"] = None
                if stop.is_set():
                    break  # stopped by a clean shutdown (below): not a failure
                if proc.returncode:
                    logger.error("run_duties failed (%s): %s", proc.returncode, err[-2000:])
                else:
                    logger.warning("beat silent or late: %s ran %s", by, out.strip())
            except Exception:
                logger.exception("duty watcher step failed")
    finally:
        connection.close()


_watcher: dict[str, Any] = {}


def on_worker_ready(sender=None, **kwargs) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=_watch_loop, args=(stop, process_name("worker")), name="df-duties", daemon=True)
    _watcher.update(stop=stop, thread=thread)
    thread.start()


def on_worker_shutdown(sender=None, **kwargs) -> None:
    stop, thread = _watcher.get("stop"), _watcher.get("thread")
    if stop is not None:
        stop.set()
    proc = _watcher.get("proc")
    if proc is not None and proc.poll() is None:
        # A clean stop does not wait for duties the watcher started: each runs under its duty's lease and is
        # idempotent, so an interrupted one is run again by whoever takes the lease after it expires.
        proc.terminate()
    if thread is not None:
        thread.join(timeout=10)


def connect() -> None:
    from celery import signals

    signals.worker_ready.connect(on_worker_ready, weak=False, dispatch_uid="core.duties.ready")
    signals.worker_shutdown.connect(on_worker_shutdown, weak=False, dispatch_uid="core.duties.shutdown")


# ---- what the web shows ---------------------------------------------------------------------------
def duties_status(*, now=None) -> dict:
    """Beat's heartbeat and each duty's last run, for /readyz details, the workers page and the banner."""
    from .models import Duty

    now = now or timezone.now()
    stale = stale_seconds()
    rows = {d.name: d for d in Duty.objects.all()[:100]}
    beat = rows.get(SCHEDULER)
    seen = beat.last_finished_at if beat is not None else None
    since = None if seen is None else round((now - seen).total_seconds(), 1)
    if seen is None:
        state, detail = "never_seen", _("The scheduler (celery beat) has never reported.")
    elif since > stale:
        state = "dead"
        detail = _("The scheduler (celery beat) has not been seen for %(s)d s (%(by)s).") % {
            "s": since,
            "by": beat.last_by or "?",
        }
    else:
        state, detail = "alive", _("The scheduler (celery beat) was seen %(s)s s ago.") % {"s": since}
    duties = []
    for name, spec in registry.duties.items():
        interval = duty_interval(name)
        row = rows.get(name)
        last = row.last_finished_at if row is not None else None
        age = None if last is None else round((now - last).total_seconds(), 1)
        duties.append(
            {
                "name": name,
                "label": str(spec.label),
                "interval": interval,
                "last_finished_at": last,
                "seconds_since": age,
                "last_by": row.last_by if row is not None else "",
                "last_ok": row.last_ok if row is not None else True,
                "last_error": row.last_error if row is not None else "",
                "running": bool(row is not None and row.lease_expires_at and row.lease_expires_at > now),
                # Overdue: not run for its interval plus the stale margin (nobody is running it).
                "overdue": interval is not None and (age is None or age > interval + stale),
            }
        )
    return {
        "scheduler": {
            "state": state,
            "ok": state == "alive",
            "last_seen_at": seen,
            "seconds_since": since,
            "detail": detail,
        },
        "duties": duties,
        "stale_after_seconds": stale,
    }


def scheduler_status_check() -> dict:
    """/readyz component `scheduler`: beat's heartbeat (degraded when dead, never unready)."""
    view = duties_status()
    return {"ok": view["scheduler"]["ok"], "state": view["scheduler"]["state"], "detail": view["scheduler"]["detail"]}


def duties_status_check() -> dict:
    """/readyz component `duties`: each periodic duty's last run; degraded when one is overdue or failed."""
    view = duties_status()
    bad = [d for d in view["duties"] if d["overdue"] or not d["last_ok"]]
    items = {
        d["name"]: {
            "seconds_since_last_run": d["seconds_since"],
            "interval": d["interval"],
            "last_by": d["last_by"],
            "ok": not (d["overdue"] or not d["last_ok"]),
            "last_error": d["last_error"],
        }
        for d in view["duties"]
    }
    if bad:
        detail = ngettext(
            "%(n)d periodic duty is overdue or failing: %(names)s",
            "%(n)d periodic duties are overdue or failing: %(names)s",
            len(bad),
        ) % {"n": len(bad), "names": ", ".join(d["name"] for d in bad)}
    else:
        detail = _("Every periodic duty ran on time.")
    return {"ok": not bad, "detail": detail, "duties": items}


def banner_items(request) -> list[dict]:
    """A dead scheduler in the banner of every page (the web notices the stale heartbeat itself)."""
    from django.urls import NoReverseMatch, reverse

    from .services import user_role

    if user_role(getattr(request, "user", None)) is None:
        return []
    view = duties_status()
    if view["scheduler"]["state"] != "dead":
        return []
    overdue = [d["label"] for d in view["duties"] if d["overdue"]]
    title = view["scheduler"]["detail"] + " "
    if overdue:
        title += _("Overdue, no process is running them: %(duties)s.") % {"duties": ", ".join(overdue)}
    else:
        title += _("Workers are running its duties meanwhile; restart beat.")
    try:
        url = reverse("tasks:workers")
    except NoReverseMatch:
        url = ""
    return [{"level": "critical" if overdue else "warning", "title": title, "url": url}]
