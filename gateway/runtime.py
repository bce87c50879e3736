"""The gateway's hot path state: in-process caches of keys, model configs and budgets, and the metering writer.

Measured before this module (docs/models.md, "Gateway overhead"): every call started a thread (Django's
per-request thread-sensitive executor) for its lookups and another for its metering, opened a database
connection on each new thread, and queried the key, its project, its allowed models, the model config and the
key's budget every time. Here:

- **Caches** (this process): keys by the SHA-256 of the whole key text, model configs by name, and each budgeted
  key's tokens used this period. An entry is trusted for `GATEWAY_CACHE_SECONDS` (settings; default 5 s), so a
  key revoked, a project paused, a model config changed or a budget spent in *another* process takes effect
  here within that bound; in this process the signals below drop the entry at once. Expiry needs no reload:
  `expires_at` is compared with the clock on every call. Tokens metered by this process count against the
  key's budget at once; other processes' tokens within the bound.
- **Database reads** (cache misses, at most one a key and a model every few seconds) run on a small dedicated
  thread pool whose threads keep their connections (renewed every minute, dropped after an error).
- **Metering** (`Meter`): one writer thread owns a connection and commits the calls waiting for it as one
  transaction (group commit): their tokens_usage rows, request-log rows and the keys' last-use times. The view
  awaits its call's commit before it sends the answer (or a stream's final event), so an answer a client has
  received is always metered: a portal process killed at any moment loses no tokens a client was given. The
  price is one commit of latency, shared by every call in the batch under load.

Under WSGI (runserver, Django's test client) the same work runs through `sync_to_async` on the request's own
thread, as any view's database work does there.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.conf import settings
from django.db import close_old_connections, connections

log = logging.getLogger(__name__)
T = TypeVar("T")


def cache_seconds() -> float:
    """How long a cached key, model config or budget total is trusted (the revocation bound across processes)."""
    return float(getattr(settings, "GATEWAY_CACHE_SECONDS", 5.0))


# ---- caches ----------------------------------------------------------------------------------------------
@dataclass
class CachedKey:
    """A key row (its project loaded) and the model configs it may call (empty: all), as read at `loaded`."""

    key: Any
    allowed: frozenset[int]
    loaded: float


@dataclass
class CachedModel:
    """A model config and its client endpoint (the API key decrypted once), as read at `loaded`."""

    config: Any
    endpoint: Any
    loaded: float


@dataclass
class CachedUsage:
    """A budgeted key's tokens since `since`: the database's total at `loaded` plus this process's calls after."""

    since: Any
    stored: int
    local: int
    loaded: float


class Caches:
    """The three in-process caches; entries are plain dict items replaced whole (no partial updates)."""

    def __init__(self) -> None:
        self.keys: dict[str, CachedKey] = {}
        self.models: dict[str, CachedModel] = {}
        self.usage: dict[int, CachedUsage] = {}

    @staticmethod
    def fresh(entry, now: float | None = None) -> bool:
        return entry is not None and (now or time.monotonic()) - entry.loaded < cache_seconds()

    def key(self, digest: str) -> CachedKey | None:
        entry = self.keys.get(digest)
        return entry if self.fresh(entry) else None

    def model(self, name: str) -> CachedModel | None:
        entry = self.models.get(name)
        return entry if self.fresh(entry) else None

    def used(self, key_id: int, since) -> int | None:
        entry = self.usage.get(key_id)
        if entry is None or entry.since != since or not self.fresh(entry):
            return None
        return entry.stored + entry.local

    def add_used(self, key_id: int, tokens: int) -> None:
        entry = self.usage.get(key_id)
        if entry is not None and tokens:
            entry.local += tokens

    # list(dict.items()) copies in one step under the GIL; iterating the live view could meet a reader thread's
    # insert ("dictionary changed size during iteration").
    def forget_key(self, key_id: int) -> None:
        for digest in [d for d, e in list(self.keys.items()) if e.key.pk == key_id]:
            self.keys.pop(digest, None)
        self.usage.pop(key_id, None)

    def forget_project(self, project_id: int) -> None:
        for digest in [d for d, e in list(self.keys.items()) if e.key.project_id == project_id]:
            self.keys.pop(digest, None)

    def clear(self) -> None:
        self.keys.clear()
        self.models.clear()
        self.usage.clear()


caches = Caches()


# Signals keep this process's caches exact (cache invalidation is what STYLE.md allows signals for); other
# processes rely on the time bound.
def on_key_saved(sender, instance, **kwargs) -> None:
    caches.forget_key(instance.pk)


def on_key_models_changed(sender, instance, **kwargs) -> None:
    if getattr(instance, "pk", None) is not None and hasattr(instance, "key_hash"):
        caches.forget_key(instance.pk)
    else:  # changed from the model config's side
        caches.keys.clear()


def on_project_saved(sender, instance, **kwargs) -> None:
    caches.forget_project(instance.pk)


def on_model_config_saved(sender, instance, **kwargs) -> None:
    caches.models.clear()


# ---- database reads off the event loop ------------------------------------------------------------------------
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_local = threading.local()
# The gateway's own threads keep their connections (on SQLite, CONN_MAX_AGE 0 would reopen one per call), renew
# them this often, and drop them after an error.
CONNECTION_RENEW_S = 60.0


def _with_connection(fn: Callable[..., T], *args) -> T:
    now = time.monotonic()
    if now >= getattr(_local, "renew_at", 0.0):
        close_old_connections()
        connections.close_all()
        _local.renew_at = now + CONNECTION_RENEW_S
    try:
        return fn(*args)
    except Exception:
        connections.close_all()  # this thread's connections: a broken one must not serve the next call
        raise


async def db_read(fn: Callable[..., T], *args) -> T:
    """Run `fn(*args)` (database reads) on the gateway's reader threads, which keep their connections."""
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="gateway-db")
    return await asyncio.get_running_loop().run_in_executor(_pool, _with_connection, fn, *args)


# ---- metering: one writer thread, group commit --------------------------------------------------------------
_STOP = object()


class Meter:
    """Writes metered calls in batches on one thread; `record()` resolves once its call's rows are committed."""

    def __init__(self, write: Callable[[list[dict]], None], *, max_batch: int = 500) -> None:
        self._write = write
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.batches = 0

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._run, name="gateway-meter", daemon=True)
                    self._thread.start()

    def submit(self, row: dict) -> concurrent.futures.Future:
        """Queue one call's row; the future is done when it is committed (or carries the write's error)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._ensure_thread()
        self._queue.put((row, future))
        return future

    async def record(self, row: dict) -> None:
        """Queue one call's row and wait until it is committed."""
        await asyncio.wrap_future(self.submit(row))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch = []
            stop = item is _STOP
            if not stop:
                batch.append(item)
            while len(batch) < self._max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stop = True
                    continue
                batch.append(more)
            if batch:
                self._commit(batch)
            if stop:
                connections.close_all()
                return

    def _commit(self, batch: list[tuple[dict, concurrent.futures.Future]]) -> None:
        try:
            _with_connection(self._write, [row for row, _future in batch])
        except Exception:
            if len(batch) == 1:
                log.exception("could not meter a gateway call")
                batch[0][1].set_exception(RuntimeError("metering failed"))
                return
            # One bad row must not cost the others theirs: write them one by one.
            for one in batch:
                self._commit([one])
            return
        self.batches += 1
        for _row, future in batch:
            future.set_result(None)

    def flush(self, timeout: float = 10.0) -> None:
        """Write everything queued, then stop the writer (process exit); a later submit starts a new one."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        self._queue.put(_STOP)
        thread.join(timeout)


def _write_calls(rows: list[dict]) -> None:
    from . import services

    services.gateway_calls_record(rows)


meter = Meter(_write_calls)
# A graceful stop (SIGTERM: uvicorn lets answers finish, then the interpreter exits) writes what is queued:
# only calls whose client went away mid-stream are queued without anyone waiting for them.
atexit.register(meter.flush)
