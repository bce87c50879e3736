"""Circuit breaker (closed / open / half-open) over a pluggable state store.

The store owns the state machine so that a shared store (Redis) can apply each transition
atomically: every worker process sees one breaker per model endpoint, and exactly one of
them probes a half-open endpoint at a time.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .config import BreakerPolicy
from .errors import BreakerOpen

__all__ = [
    "CLOSED",
    "HALF_OPEN",
    "OPEN",
    "BreakerSnapshot",
    "BreakerStore",
    "CircuitBreaker",
    "ClosedStateCache",
    "InMemoryBreakerStore",
    "Permit",
    "RedisBreakerStore",
    "SqliteBreakerStore",
]

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass(frozen=True)
class Permit:
    """The store's answer to "may I call?"; `probe` marks the single half-open trial call."""

    allowed: bool
    state: str
    retry_after: float = 0.0
    probe: bool = False


@dataclass(frozen=True)
class BreakerSnapshot:
    """Read-only view for dashboards and tests."""

    state: str
    failures: int
    retry_after: float


class BreakerStore(Protocol):
    """Where breaker state lives; every method is one atomic transition."""

    def acquire(self, key: str, reset_timeout_s: float, probe_timeout_s: float) -> Permit:
        """Admit a call, move open → half-open when the reset timeout passed, or refuse."""
        ...

    def record_success(self, key: str) -> str:
        """A call succeeded: close and clear failures. Returns the new state."""
        ...

    def record_failure(self, key: str, threshold: int) -> str:
        """A call failed: count it; open at the threshold or when a probe fails."""
        ...

    def snapshot(self, key: str, reset_timeout_s: float) -> BreakerSnapshot:
        """Current state without changing it."""
        ...

    def reset(self, key: str) -> None:
        """Forget the breaker (operator action, tests)."""
        ...


# ------------------------------------------------------------------------------ in memory


@dataclass
class _Entry:
    state: str = CLOSED
    failures: int = 0
    opened_at: float = 0.0
    probe_until: float = 0.0


class InMemoryBreakerStore:
    """Per-process store: enough for one worker, or for tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        """`clock` is injectable so state changes can be driven without sleeping."""
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    def acquire(self, key: str, reset_timeout_s: float, probe_timeout_s: float) -> Permit:
        """See BreakerStore.acquire."""
        with self._lock:
            e = self._entries.get(key)
            if e is None or e.state == CLOSED:
                return Permit(True, CLOSED)
            now = self._clock()
            if e.state == OPEN:
                wait = e.opened_at + reset_timeout_s - now
                if wait > 0:
                    return Permit(False, OPEN, wait)
                e.state, e.probe_until = HALF_OPEN, now + probe_timeout_s
                return Permit(True, HALF_OPEN, probe=True)
            # Half-open: one probe at a time; a probe that never reported (its worker died)
            # is replaced once its lease runs out.
            if now >= e.probe_until:
                e.probe_until = now + probe_timeout_s
                return Permit(True, HALF_OPEN, probe=True)
            return Permit(False, HALF_OPEN, e.probe_until - now)

    def record_success(self, key: str) -> str:
        """See BreakerStore.record_success."""
        with self._lock:
            self._entries.pop(key, None)
            return CLOSED

    def record_failure(self, key: str, threshold: int) -> str:
        """See BreakerStore.record_failure."""
        with self._lock:
            e = self._entries.setdefault(key, _Entry())
            e.failures += 1
            if e.state == HALF_OPEN or (e.state == CLOSED and e.failures >= threshold):
                e.state, e.opened_at = OPEN, self._clock()
            return e.state

    def snapshot(self, key: str, reset_timeout_s: float) -> BreakerSnapshot:
        """See BreakerStore.snapshot."""
        with self._lock:
            e = self._entries.get(key) or _Entry()
            now = self._clock()
            wait = 0.0
            if e.state == OPEN:
                wait = max(0.0, e.opened_at + reset_timeout_s - now)
            elif e.state == HALF_OPEN:
                wait = max(0.0, e.probe_until - now)
            return BreakerSnapshot(e.state, e.failures, wait)

    def reset(self, key: str) -> None:
        """See BreakerStore.reset."""
        with self._lock:
            self._entries.pop(key, None)


# ---------------------------------------------------------------------------------- redis

# Time comes from the Redis server (TIME), not from each worker, so workers on machines with
# skewed clocks still agree on when the reset timeout has passed. Redis 5+ replicates script
# effects, which makes TIME inside a writing script safe. Floats are returned as strings
# because Lua numbers are truncated to integers on the way out.
_LUA_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) + tonumber(t[2]) / 1000000\n"

_LUA_ACQUIRE = (
    """
local key = KEYS[1]
local reset, probe_timeout, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HGET', key, 'state')
if (not state) or state == 'closed' then return {1, 'closed', '0', 0} end
"""
    + _LUA_NOW
    + """
if state == 'open' then
  local wait = tonumber(redis.call('HGET', key, 'opened_at') or '0') + reset - now
  if wait > 0 then return {0, 'open', tostring(wait), 0} end
  redis.call('HSET', key, 'state', 'half_open', 'probe_until', tostring(now + probe_timeout))
  redis.call('EXPIRE', key, ttl)
  return {1, 'half_open', '0', 1}
end
local probe_until = tonumber(redis.call('HGET', key, 'probe_until') or '0')
if now >= probe_until then
  redis.call('HSET', key, 'probe_until', tostring(now + probe_timeout))
  redis.call('EXPIRE', key, ttl)
  return {1, 'half_open', '0', 1}
end
return {0, 'half_open', tostring(probe_until - now), 0}
"""
)

_LUA_FAILURE = (
    """
local key = KEYS[1]
local threshold, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HGET', key, 'state') or 'closed'
"""
    + _LUA_NOW
    + """
local failures = redis.call('HINCRBY', key, 'failures', 1)
if state == 'half_open' or (state == 'closed' and failures >= threshold) then
  redis.call('HSET', key, 'state', 'open', 'opened_at', tostring(now))
  state = 'open'
else
  redis.call('HSET', key, 'state', state)
end
redis.call('EXPIRE', key, ttl)
return state
"""
)

# Deleting the key is "closed with no failures"; EXISTS first keeps the hot path read-only.
_LUA_SUCCESS = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('DEL', KEYS[1]) end
return 'closed'
"""

_LUA_SNAPSHOT = (
    """
local key = KEYS[1]
local reset = tonumber(ARGV[1])
local v = redis.call('HMGET', key, 'state', 'failures', 'opened_at', 'probe_until')
"""
    + _LUA_NOW
    + """
local state = v[1] or 'closed'
local wait = 0
if state == 'open' then wait = tonumber(v[3] or '0') + reset - now end
if state == 'half_open' then wait = tonumber(v[4] or '0') - now end
if wait < 0 then wait = 0 end
return {state, tonumber(v[2] or '0'), tostring(wait)}
"""
)


class RedisBreakerStore:
    """Shared store: one hash per breaker, every transition one Lua script (atomic)."""

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = "dataflare:breaker:",
        ttl_s: int = 7 * 24 * 3600,
        fail_open: bool = True,
    ) -> None:
        """Use a redis.Redis client (or a URL).

        Args:
            client: a redis.Redis instance or a redis:// URL.
            prefix: key prefix; the breaker key follows it.
            ttl_s: idle breakers expire so retired endpoints do not pile up.
            fail_open: when Redis itself fails, admit calls (logged) instead of stopping all
                inference; the breaker protects the model server, not the other way round.
        """
        if isinstance(client, str):
            import redis

            client = redis.Redis.from_url(client)
        self._redis = client
        self._prefix = prefix
        self._ttl = ttl_s
        self._fail_open = fail_open
        self._acquire = client.register_script(_LUA_ACQUIRE)
        self._failure = client.register_script(_LUA_FAILURE)
        self._success = client.register_script(_LUA_SUCCESS)
        self._snapshot = client.register_script(_LUA_SNAPSHOT)

    def _key(self, key: str) -> str:
        return self._prefix + key

    def _guard(self, what: str, fn: Callable[[], Any], fallback: Any) -> Any:
        """Run a script; on a Redis error fail open (logged) or re-raise."""
        import redis

        try:
            return fn()
        except redis.RedisError:
            if not self._fail_open:
                raise
            log.warning("breaker store unavailable during %s; failing open", what, exc_info=True)
            return fallback

    def acquire(self, key: str, reset_timeout_s: float, probe_timeout_s: float) -> Permit:
        """See BreakerStore.acquire."""
        args = [reset_timeout_s, probe_timeout_s, self._ttl]
        res = self._guard(
            "acquire",
            lambda: self._acquire(keys=[self._key(key)], args=args),
            [1, b"closed", b"0", 0],
        )
        state = res[1].decode() if isinstance(res[1], bytes) else res[1]
        return Permit(bool(res[0]), state, float(res[2]), bool(res[3]))

    def record_success(self, key: str) -> str:
        """See BreakerStore.record_success."""
        self._guard("success", lambda: self._success(keys=[self._key(key)]), b"closed")
        return CLOSED

    def record_failure(self, key: str, threshold: int) -> str:
        """See BreakerStore.record_failure."""
        res = self._guard(
            "failure",
            lambda: self._failure(keys=[self._key(key)], args=[threshold, self._ttl]),
            b"closed",
        )
        return res.decode() if isinstance(res, bytes) else res

    def snapshot(self, key: str, reset_timeout_s: float) -> BreakerSnapshot:
        """See BreakerStore.snapshot."""
        res = self._snapshot(keys=[self._key(key)], args=[reset_timeout_s])
        state = res[0].decode() if isinstance(res[0], bytes) else res[0]
        return BreakerSnapshot(state, int(res[1]), float(res[2]))

    def reset(self, key: str) -> None:
        """See BreakerStore.reset."""
        self._redis.delete(self._key(key))


# --------------------------------------------------------------------------------- sqlite

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS breaker (
    key TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0,
    opened_at REAL NOT NULL DEFAULT 0,
    probe_until REAL NOT NULL DEFAULT 0,
    touched_at REAL NOT NULL DEFAULT 0
)
"""


class SqliteBreakerStore:
    """Shared store for one machine without Redis: a SQLite file every worker process opens.

    Each transition is one `BEGIN IMMEDIATE` transaction (SQLite's write lock), so concurrent
    workers apply transitions one at a time, like the Redis Lua scripts. Time is the wall clock
    (`time.time`), which all processes on one machine share. Connections are per thread and
    per process (re-opened after fork).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout_s: float = 5.0,
        ttl_s: float = 7 * 24 * 3600,
        fail_open: bool = True,
    ) -> None:
        """Open (and create) the store.

        Args:
            path: the SQLite file, e.g. DATA_DIR/breaker.sqlite3.
            clock: wall-clock seconds; injectable for tests.
            busy_timeout_s: how long a transition waits for another process's write lock.
            ttl_s: rows idle this long are deleted (retired endpoints do not pile up).
            fail_open: on a SQLite error admit calls (logged) instead of stopping inference.
        """
        self.path = os.fspath(path)
        self._clock = clock
        self._busy_timeout_s = busy_timeout_s
        self._ttl = ttl_s
        self._fail_open = fail_open
        self._local = threading.local()
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with self._tx() as db:
            db.execute(_SQLITE_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection (a forked child opens its own)."""
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves.
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    class _Tx:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __enter__(self) -> sqlite3.Connection:
            # IMMEDIATE takes the write lock up front: read-modify-write without a lost update.
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")

    def _tx(self) -> SqliteBreakerStore._Tx:
        return self._Tx(self._conn())

    def _guard(self, what: str, fn: Callable[[], Any], fallback: Any) -> Any:
        """Run a transition; on a SQLite error fail open (logged) or re-raise."""
        try:
            return fn()
        except sqlite3.Error:
            if not self._fail_open:
                raise
            log.warning("breaker store unavailable during %s; failing open", what, exc_info=True)
            return fallback

    @staticmethod
    def _row(db: sqlite3.Connection, key: str) -> _Entry | None:
        row = db.execute("SELECT state, failures, opened_at, probe_until FROM breaker WHERE key = ?", (key,)).fetchone()
        return _Entry(*row) if row else None

    def _put(self, db: sqlite3.Connection, key: str, e: _Entry, now: float) -> None:
        db.execute(
            "INSERT INTO breaker (key, state, failures, opened_at, probe_until, touched_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET state = excluded.state, "
            "failures = excluded.failures, opened_at = excluded.opened_at, "
            "probe_until = excluded.probe_until, touched_at = excluded.touched_at",
            (key, e.state, e.failures, e.opened_at, e.probe_until, now),
        )

    def acquire(self, key: str, reset_timeout_s: float, probe_timeout_s: float) -> Permit:
        """See BreakerStore.acquire."""

        def run() -> Permit:
            db = self._conn()
            # The hot path (closed) is a plain read: no write lock while the endpoint is healthy.
            row = db.execute("SELECT state FROM breaker WHERE key = ?", (key,)).fetchone()
            if row is None or row[0] == CLOSED:
                return Permit(True, CLOSED)
            with self._tx() as db:
                e = self._row(db, key)
                if e is None or e.state == CLOSED:
                    return Permit(True, CLOSED)
                now = self._clock()
                if e.state == OPEN:
                    wait = e.opened_at + reset_timeout_s - now
                    if wait > 0:
                        return Permit(False, OPEN, wait)
                    e.state, e.probe_until = HALF_OPEN, now + probe_timeout_s
                    self._put(db, key, e, now)
                    return Permit(True, HALF_OPEN, probe=True)
                if now >= e.probe_until:
                    e.probe_until = now + probe_timeout_s
                    self._put(db, key, e, now)
                    return Permit(True, HALF_OPEN, probe=True)
                return Permit(False, HALF_OPEN, e.probe_until - now)

        return self._guard("acquire", run, Permit(True, CLOSED))

    def record_success(self, key: str) -> str:
        """See BreakerStore.record_success."""

        def run() -> str:
            db = self._conn()
            if db.execute("SELECT 1 FROM breaker WHERE key = ?", (key,)).fetchone() is None:
                return CLOSED
            with self._tx() as db:
                db.execute("DELETE FROM breaker WHERE key = ?", (key,))
            return CLOSED

        return self._guard("success", run, CLOSED)

    def record_failure(self, key: str, threshold: int) -> str:
        """See BreakerStore.record_failure."""

        def run() -> str:
            with self._tx() as db:
                now = self._clock()
                e = self._row(db, key) or _Entry()
                e.failures += 1
                if e.state == HALF_OPEN or (e.state == CLOSED and e.failures >= threshold):
                    e.state, e.opened_at = OPEN, now
                self._put(db, key, e, now)
                # Housekeeping on the (rare) failure path keeps the hot path read-only.
                db.execute("DELETE FROM breaker WHERE touched_at < ?", (now - self._ttl,))
                return e.state

        return self._guard("failure", run, CLOSED)

    def snapshot(self, key: str, reset_timeout_s: float) -> BreakerSnapshot:
        """See BreakerStore.snapshot."""
        e = self._row(self._conn(), key) or _Entry()
        now = self._clock()
        wait = 0.0
        if e.state == OPEN:
            wait = max(0.0, e.opened_at + reset_timeout_s - now)
        elif e.state == HALF_OPEN:
            wait = max(0.0, e.probe_until - now)
        return BreakerSnapshot(e.state, e.failures, wait)

    def reset(self, key: str) -> None:
        """See BreakerStore.reset."""
        with self._tx() as db:
            db.execute("DELETE FROM breaker WHERE key = ?", (key,))


# -------------------------------------------------------------------------------- breaker


class ClosedStateCache:
    """A store wrapper that trusts a breaker's *closed* state for `ttl_s` (the gateway's event loop).

    With a shared store every call costs two round trips (acquire, record_success): in the portal's gateway,
    which runs on an event loop, those were blocking Redis calls, about a fifth of the loop's time per request
    (py-spy, docs/models.md "Gateway hot path"). Here, after the store said *closed*, `acquire` admits calls
    without asking it for `ttl_s`, and a success is written at most once per `ttl_s` while nothing failed.
    Everything else goes to the store at once: a failure (and it drops the cached state, so the next call asks
    the store), open and half-open states (never cached), snapshots and resets.

    What it trades: a breaker opened by *another* process is seen here up to `ttl_s` late (calls in that window
    still go to the endpoint and their failures are counted), and within `ttl_s` of a written success this
    process's further successes do not reset other processes' failure counts (the breaker may open slightly
    sooner, never later). In this process a failure is never hidden.
    """

    def __init__(self, store: BreakerStore, ttl_s: float = 0.25, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self._clock = clock
        # key -> (closed confirmed at, success written at): plain dict items replaced whole under the GIL.
        self._closed: dict[str, tuple[float, float]] = {}
        self.store_calls = 0

    def acquire(self, key: str, reset_timeout_s: float, probe_timeout_s: float) -> Permit:
        """See BreakerStore.acquire; a closed state confirmed less than `ttl_s` ago answers without the store."""
        hit = self._closed.get(key)
        now = self._clock()
        if hit is not None and now - hit[0] < self.ttl_s:
            return Permit(True, CLOSED)
        self.store_calls += 1
        permit = self.store.acquire(key, reset_timeout_s, probe_timeout_s)
        if permit.allowed and permit.state == CLOSED and not permit.probe:
            self._closed[key] = (now, hit[1] if hit is not None else float("-inf"))
        else:
            self._closed.pop(key, None)
        return permit

    def record_success(self, key: str) -> str:
        """See BreakerStore.record_success; skipped while the state is cached closed and a success was written
        less than `ttl_s` ago."""
        hit = self._closed.get(key)
        now = self._clock()
        if hit is not None and now - hit[1] < self.ttl_s and now - hit[0] < self.ttl_s:
            return CLOSED
        self.store_calls += 1
        state = self.store.record_success(key)
        if state == CLOSED:
            self._closed[key] = (now, now)
        else:
            self._closed.pop(key, None)
        return state

    def record_failure(self, key: str, threshold: int) -> str:
        """See BreakerStore.record_failure (always written; the cached state is dropped)."""
        self._closed.pop(key, None)
        self.store_calls += 1
        return self.store.record_failure(key, threshold)

    def snapshot(self, key: str, reset_timeout_s: float) -> BreakerSnapshot:
        """See BreakerStore.snapshot (always the store's)."""
        return self.store.snapshot(key, reset_timeout_s)

    def reset(self, key: str) -> None:
        """See BreakerStore.reset."""
        self._closed.pop(key, None)
        self.store.reset(key)


class CircuitBreaker:
    """One breaker for one model endpoint, with its policy, over a store."""

    def __init__(self, key: str, store: BreakerStore, policy: BreakerPolicy, probe_timeout_s: float) -> None:
        """`probe_timeout_s` bounds how long one half-open probe may hold the trial slot."""
        self.key = key
        self.store = store
        self.policy = policy
        self.probe_timeout_s = probe_timeout_s

    def before_call(self) -> Permit:
        """Admit a call or raise BreakerOpen with how long to wait."""
        permit = self.store.acquire(self.key, self.policy.reset_timeout_s, self.probe_timeout_s)
        if not permit.allowed:
            raise BreakerOpen(self.key, permit.retry_after, permit.state)
        return permit

    def record_success(self) -> str:
        """Report a call that reached a healthy server."""
        return self.store.record_success(self.key)

    def record_failure(self) -> str:
        """Report a call that found the server unavailable, hung or broken."""
        state = self.store.record_failure(self.key, self.policy.failure_threshold)
        if state == OPEN:
            log.warning("circuit breaker open for %s", self.key)
        return state

    def snapshot(self) -> BreakerSnapshot:
        """Current state."""
        return self.store.snapshot(self.key, self.policy.reset_timeout_s)

    def reset(self) -> None:
        """Close and forget failures."""
        self.store.reset(self.key)
