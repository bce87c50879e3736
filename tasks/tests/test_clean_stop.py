"""A clean stop of a worker is quiet and leaves nothing behind (real processes, real signals).

`scripts/dev` stops its worker with one SIGTERM to the worker's main process. The worker runs as scripts/dev
runs it (prefork pool of 2 and embedded beat, `-B`), finishes a run, and is stopped: it exits with status 0,
logs no ERROR (pool processes are stopped by Celery, not killed: "exited with signal 15" was an ERROR), its
heartbeat row is gone and no process of its group survives it. Waits are bounded polls, never timings.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from conftest import wait_until
from dataflare_portal.core import duties
from tasks.choices import RunStatus
from tasks.models import WorkerHeartbeat
from tasks.services import run_start
from tasks.tests.conftest import run_wait
from tasks.tests.factories import make_pipeline, make_records, published


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # Zombies count as gone: nothing runs any more.
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


@pytest.mark.integration
def test_a_clean_stop_is_quiet_and_leaves_no_heartbeat_and_no_process(workers, file_root, tmp_path):
    records = make_records(400)
    pipeline = make_pipeline(file_root, records=records, name="stop", batch_size=50)
    proc = workers.start(
        name="stop",
        pool="prefork",
        concurrency=2,
        extra_args=("-B", "--schedule", str(tmp_path / "celerybeat-schedule")),
    )
    workers.wait_ready(proc)
    run = run_start(pipeline=pipeline, actor=None)
    run_wait(run, 180)
    assert run.status == RunStatus.SUCCEEDED, (run.status_reason, workers.log_tail())
    assert published(run)

    os.kill(proc.pid, signal.SIGTERM)  # the main process only, as scripts/dev does
    assert proc.wait(timeout=120) == 0, workers.log_tail()
    log = (tmp_path / "worker-stop.log").read_text(errors="replace")
    assert "Warm shutdown" in log
    errors = [line for line in log.splitlines() if "ERROR" in line or "Traceback" in line]
    assert not errors, errors
    assert not WorkerHeartbeat.objects.filter(name=proc.worker_name).exists()
    wait_until(lambda: not _group_alive(proc.pid), 30)  # pool processes, beat, a duty child: all gone


def test_a_clean_stop_terminates_the_duty_run_the_watcher_started_instead_of_waiting_for_it(monkeypatch, db):
    """The watcher runs due duties in a child process; a stop ends that child rather than wait for it."""
    started = threading.Event()
    children: list[subprocess.Popen] = []
    real_popen = subprocess.Popen

    def slow_duty_run(args, **kwargs):
        # A duty run that would take a minute (a long rollup, say).
        child = real_popen([sys.executable, "-c", "import time; time.sleep(60)"], **kwargs)
        children.append(child)
        started.set()
        return child

    monkeypatch.setattr(subprocess, "Popen", slow_duty_run)
    monkeypatch.setattr(duties, "duties_due", lambda **kw: ["tasks.reap"])
    monkeypatch.setattr(duties, "stale_seconds", lambda: 0.8)  # the watcher looks every 0.2 s
    duties.on_worker_ready()
    try:
        assert started.wait(30)
        duties.on_worker_shutdown()
        thread = duties._watcher["thread"]
        assert not thread.is_alive()
        assert children[0].poll() == -signal.SIGTERM  # terminated, not waited for (it would sleep 60 s)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
