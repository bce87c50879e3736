"""Beat's scheduler with a heartbeat: every loop of celery beat records that the scheduler is alive.

Configured as `CELERY_BEAT_SCHEDULER` (settings.py), so `celery beat` and the embedded `worker -B` both
use it; it keeps PersistentScheduler's schedule file. The web reads the heartbeat (core/duties.py): a
beat that died shows in /readyz, on the workers page and in the banner, and workers take over its duties.
"""

from __future__ import annotations

import logging
import time

from celery.beat import PersistentScheduler

from . import duties

logger = logging.getLogger(__name__)

# Connections inherited from the worker that forked the embedded beat are kept referenced, never closed:
# closing one would talk on a socket the parent still uses.
_inherited: list = []


def _forget_inherited_connections() -> None:
    from django.db import connections

    for conn in connections.all(initialized_only=True):
        if conn.connection is not None:
            _inherited.append(conn.connection)
            conn.connection = None


class HeartbeatScheduler(PersistentScheduler):
    """PersistentScheduler that touches the `scheduler` duty row at least every stale/4 seconds."""

    def setup_schedule(self):
        _forget_inherited_connections()
        super().setup_schedule()
        self._touched = 0.0
        self._by = duties.process_name("beat")

    def _beat_every(self) -> float:
        return max(0.2, min(10.0, duties.stale_seconds() / 4))

    def tick(self, *args, **kwargs):
        delay = super().tick(*args, **kwargs)
        every = self._beat_every()
        now = time.monotonic()
        if now - self._touched >= every:
            try:
                duties.scheduler_touch(by=self._by)
                self._touched = now
            except Exception:  # the database may be away for a moment; beat keeps scheduling
                logger.exception("could not record beat's heartbeat")
        # Sleep no longer than the heartbeat needs, whatever the schedules are.
        return min(delay, every)
