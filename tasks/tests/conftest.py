"""Engine fixtures: an in-process doorbell for step-by-step tests, and real Celery workers.

Real workers are subprocesses, so they must see the test's database and broker:
- on PostgreSQL, transactional tests commit to the test database, whose name the worker gets;
- on SQLite, pytest-django's test database is in memory and cannot be shared, so the
  `shared_db` fixture swaps the test process's default connection to a migrated SQLite *file*
  (copied from a template migrated once per session) that the worker opens too.
The broker is Redis (REDIS_URL) when given, else the embedded SQLite transport in a temp file.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db import connections

from conftest import redis_url, wait_until

BASE_DIR = Path(django_settings.BASE_DIR)


# ---- in-process doorbell ----------------------------------------------------------------------
class Doorbell:
    """Collects dispatched batch ids instead of sending them; drain() executes them one by one."""

    def __init__(self):
        self.sent: list[tuple[str, str, bool]] = []

    def __call__(self, items):
        self.sent.extend(items)

    def drain(self, *, owner: str = "test:1", limit: int = 100_000, duplicate: bool = False) -> list[str]:
        from tasks import engine

        results = []
        while self.sent and limit:
            batch_id, _queue, _g = self.sent.pop(0)
            results.append(engine.batch_execute(batch_id=batch_id, owner=owner))
            if duplicate:
                results.append(engine.batch_execute(batch_id=batch_id, owner=owner + "-dup"))
            limit -= 1
        return results


@pytest.fixture
def doorbell(monkeypatch):
    from tasks import engine

    bell = Doorbell()
    monkeypatch.setattr(engine, "dispatch", bell)
    # These tests run inside one transaction that never commits; ring as soon as asked.
    monkeypatch.setattr(engine, "dispatch_on_commit", bell)
    engine._specs.clear()
    engine.engine_settings_forget()
    yield bell
    engine._specs.clear()


# ---- a shared database for worker subprocesses --------------------------------------------------
_template: dict = {}


def _sqlite_template(tmp_root: Path) -> Path:
    """A migrated SQLite file made once per session; each test copies it."""
    if "path" not in _template:
        path = tmp_root / "template.sqlite3"
        env = {**os.environ, "DATA_DIR": str(tmp_root / "tpl-data")}
        env.pop("DATABASE_URL", None)
        env["DATABASE_URL"] = f"sqlite:///{path}"
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=BASE_DIR,
            env=env,
            check=True,
            timeout=300,
        )
        _template["path"] = path
    return _template["path"]


@pytest.fixture(scope="session")
def _session_tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("engine-shared")


@pytest.fixture
def shared_db(transactional_db, tmp_path, _session_tmp, settings):
    """A database the test process and worker subprocesses both use; yields the worker's env."""
    from tasks import engine

    engine._specs.clear()
    engine.engine_settings_forget()
    conn = connections["default"]
    env = {}
    if conn.vendor == "postgresql":
        s = conn.settings_dict
        user = s.get("USER") or "postgres"
        pw = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
        env["DATABASE_URL"] = (
            f"postgres://{user}{pw}@{s.get('HOST') or '127.0.0.1'}:{s.get('PORT') or 5432}/{s['NAME']}"
        )
        yield env
        return
    db_file = tmp_path / "shared.sqlite3"
    shutil.copy(_sqlite_template(_session_tmp), db_file)
    original = conn
    new_settings = {**original.settings_dict, "NAME": str(db_file)}
    from django.db.backends.sqlite3.base import DatabaseWrapper

    shared = DatabaseWrapper(new_settings, alias="default")
    connections["default"] = shared
    # Other threads of this process (the lease renewer) open their own connection: to the file too.
    old_name = connections.settings["default"]["NAME"]
    connections.settings["default"]["NAME"] = str(db_file)
    env["DATABASE_URL"] = f"sqlite:///{db_file}"
    try:
        yield env
    finally:
        connections.settings["default"]["NAME"] = old_name
        shared.close()
        connections["default"] = original


# ---- real Celery workers ---------------------------------------------------------------------
def _broker_url(tmp_path: Path) -> str:
    return redis_url() or f"sqla+sqlite:///{tmp_path / 'broker.sqlite3'}"


def _use_broker(url: str) -> None:
    from dataflare_portal.celery import app, tune_embedded_transport

    app.conf.broker_url = url
    app.conf.broker_write_url = None
    app.conf.broker_read_url = None
    # Drop cached connections so the test process sends to this broker.
    app._pool = None
    try:
        app.amqp._producer_pool = None
    except AttributeError:
        pass
    tune_embedded_transport()


def _purge(url: str) -> None:
    from dataflare_portal.celery import app

    with app.connection_for_write(url) as conn:
        for q in ("default", "stages", "inference"):
            try:
                conn.default_channel.queue_purge(q)
            except Exception as exc:  # a queue that was never declared has nothing to purge
                print(f"purge {q}: {exc}")


class Workers:
    """Starts and kills real `celery worker` processes (their own process groups)."""

    def __init__(self, env: dict, tmp_path: Path):
        self.env = env
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen] = []

    def start(
        self, *, name: str = "w1", pool: str = "solo", concurrency: int = 1, extra_env=None, extra_args=()
    ) -> subprocess.Popen:
        env = {**os.environ, **self.env, **(extra_env or {})}
        log = open(self.tmp_path / f"worker-{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        cmd = [
            sys.executable,
            "-m",
            "tasks.tests.worker_main",
            "worker",
            "-n",
            f"{name}@%h",
            "-P",
            pool,
            "-c",
            str(concurrency),
            "-Q",
            "default,stages,inference",
            "--without-gossip",
            "--without-mingle",
            "-l",
            "INFO",
            *extra_args,
        ]
        proc = subprocess.Popen(
            cmd, cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        proc.worker_name = f"{name}@{os.uname().nodename}"
        self.procs.append(proc)
        return proc

    def start_beat(self, *, extra_env=None) -> subprocess.Popen:
        """A real `celery beat` (the production process), its schedule file in the test's folder."""
        env = {**os.environ, **self.env, **(extra_env or {})}
        log = open(self.tmp_path / "worker-beat.log", "ab")  # noqa: SIM115 - lives as long as the process
        cmd = [sys.executable, "-m", "celery", "-A", "dataflare_portal", "beat", "-l", "INFO"]
        cmd += ["--schedule", str(self.tmp_path / "celerybeat-schedule")]
        proc = subprocess.Popen(
            cmd, cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append(proc)
        return proc

    def wait_ready(self, proc, timeout: float = 60.0) -> None:
        from tasks.models import WorkerHeartbeat

        wait_until(lambda: WorkerHeartbeat.objects.filter(name=proc.worker_name).exists() or proc.poll(), timeout)
        assert proc.poll() is None, self.log_tail()

    def kill(self, proc) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=10)
                except Exception:
                    self.kill(proc)

    def log_tail(self, n: int = 4000) -> str:
        out = []
        for f in sorted(self.tmp_path.glob("worker-*.log")):
            out.append(f"== {f.name}\n" + f.read_text(errors="replace")[-n:])
        return "\n".join(out)


@pytest.fixture
def workers(shared_db, tmp_path, settings):
    """Real workers against the shared database and a real broker (Redis, or the embedded transport)."""
    from dataflare_portal.celery import app

    url = _broker_url(tmp_path)
    original = app.conf.broker_url
    _use_broker(url)
    _purge(url)
    env = {
        **shared_db,
        "CELERY_BROKER_URL": url,
        "WORKSPACE_DIR": str(settings.WORKSPACE_DIR),
        "ARCHIVE_DIR": str(settings.ARCHIVE_DIR),
        "FILE_ROOTS": ",".join(str(p) for p in settings.FILE_ROOTS),
        "DATA_DIR": str(tmp_path / "worker-data"),
        "CONFIG_FILE": str(settings.CONFIG_FILE),
        # Workers decrypt stored secrets (model API keys, credentials) with the portal's keys, as in production.
        "SECRETS_ENCRYPTION_KEYS": ",".join(settings.SECRETS_ENCRYPTION_KEYS),
        "LOG_LEVEL": "INFO",
    }
    w = Workers(env, tmp_path)
    yield w
    w.stop_all()
    _use_broker(original)
    time.sleep(0)


def fast_recovery() -> None:
    """Short leases and re-sends, so a killed or stopped worker's batch is taken over within seconds."""
    from dataflare_portal.core.config import config_set
    from tasks import engine

    for key, value in {
        "engine_lease_seconds": 2,
        "engine_resend_after_seconds": 3,
        "worker_heartbeat_seconds": 0.5,
    }.items():
        config_set(key=key, value=value, actor=None)
    engine.engine_settings_forget()


def start_victim(workers: Workers, tmp_path: Path, point: str, action: str):
    """A worker that stops itself (action "stop") or hangs ("hang") at a named fault point (worker_main.py)."""
    faults = tmp_path / "faults"
    faults.mkdir(exist_ok=True)
    victim = workers.start(
        name="victim", extra_env={"DF_TEST_FAULT": f"{point}:{action}", "DF_TEST_FAULT_DIR": str(faults)}
    )
    workers.wait_ready(victim)
    return victim, faults


def stopped(pid: int) -> bool:
    """Whether the process is stopped (SIGSTOP): state T in /proc."""
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "T"


def run_wait(run, timeout: float = 120.0, *, reap: bool = True):
    """Wait for a run to reach a final state, running reaper passes as beat would."""
    from tasks.choices import RunStatus
    from tasks.services import reap as reap_pass

    def done():
        if reap:
            reap_pass()
        run.refresh_from_db()
        return run.status in RunStatus.terminal()

    wait_until(done, timeout, interval=0.2)
    return run
