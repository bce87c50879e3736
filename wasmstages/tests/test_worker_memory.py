"""A real Celery worker running memory-hungry and memory-bomb modules over many batches keeps its memory bounded:
every batch's sandbox is freed, so the worker's RSS (read from /proc) grows by at most about one sandbox, not by
one per batch."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.choices import RunStatus
from tasks.services import run_start
from tasks.tests.conftest import run_wait
from tasks.tests.factories import make_pipeline, make_records, published
from wasmstages import runtime
from wasmstages.services import wasm_module_upload

from . import modules

pytestmark = [pytest.mark.integration]

MEMORY_PAGES = 1024  # the default limit: 64 MiB a sandbox
LIMIT_KIB = MEMORY_PAGES * runtime.PAGE // 1024


def _status_kib(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (peak resident) of a process, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _sep, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def test_a_worker_stays_bounded_running_memory_bombs_over_many_batches(workers, file_root):
    wasm_module_upload(name="greedy", content=modules.binary(modules.GREEDY), actor=None)
    stage = {"module": "greedy", "limits": {"memory_pages": MEMORY_PAGES}}
    worker = workers.start(name="memory")
    workers.wait_ready(worker)

    # Warm-up: one batch loads wasmtime's engine and compiles the module, and proves the module really takes the
    # whole limit in the worker (its peak RSS rises by most of it).
    before_warm = _status_kib(worker.pid)
    warm = make_pipeline(
        file_root, records=make_records(5, unique=True), stages=[("wasm", "wasm", stage)], batch_size=5, name="warm"
    )
    run = run_wait(run_start(pipeline=warm, actor=None))
    assert run.status == RunStatus.SUCCEEDED, (run.status_reason, workers.log_tail())
    warmed = _status_kib(worker.pid)
    assert warmed["VmHWM"] - before_warm["VmRSS"] > LIMIT_KIB * 3 // 4, (before_warm, warmed)

    # 60 batches that each fill the memory limit, then a run whose poison record makes every attempt of its batch
    # (and each re-run that looks for the record) fill the limit and trap.
    records = make_records(300, unique=True)
    many = make_pipeline(
        file_root,
        records=records,
        stages=[("wasm", "wasm", stage), ("publish", "publish", {})],
        batch_size=5,
        name="many",
        max_batch_attempts=2,
    )
    run = run_wait(run_start(pipeline=many, actor=None), timeout=300)
    assert run.status == RunStatus.SUCCEEDED, (run.status_reason, workers.log_tail())
    assert published(run) == records
    poisoned = make_records(40, unique=True)
    poisoned[17]["text"] = "a bomb!"
    bomb = make_pipeline(
        file_root, records=poisoned, stages=[("wasm", "wasm", stage)], batch_size=20, name="bomb", max_batch_attempts=3
    )
    run = run_wait(run_start(pipeline=bomb, actor=None), timeout=300)
    assert run.status == RunStatus.FAILED
    assert "greedy@1" in run.status_reason and "record 17 (id 17)" in run.status_reason

    after = _status_kib(worker.pid)
    print(f"worker KiB: before warm-up {before_warm}, after warm-up {warmed}, after the runs {after}")  # with -s
    assert worker.poll() is None  # the same worker process ran all of it
    # More than 60 + 3 * 12 sandboxes of 64 MiB were filled (several GiB); the worker keeps at most about one.
    assert after["VmRSS"] - warmed["VmRSS"] < 2 * LIMIT_KIB, (warmed, after)
    assert after["VmHWM"] - warmed["VmRSS"] < 3 * LIMIT_KIB, (warmed, after)
