"""Hot reload in a real Celery worker: a run keeps the version it started with, the next run takes the new one,
and the same worker process serves both (no restart)."""

from __future__ import annotations

import pytest

from conftest import wait_until
from tasks.choices import RunStatus
from tasks.models import StageRun
from tasks.services import run_start
from tasks.tests.conftest import run_wait
from tasks.tests.factories import make_pipeline, make_records, published
from wasmstages.services import wasm_module_upload

from . import modules

pytestmark = [pytest.mark.integration]


def test_a_worker_finishes_a_run_on_the_old_version_and_runs_the_next_on_the_new_one(workers, file_root):
    v1 = wasm_module_upload(name="tag", content=modules.binary(modules.SLOW_ECHO), actor=None)
    records = make_records(400, unique=True)
    stages = [("wasm", "wasm", {"module": "tag"}), ("publish", "publish", {})]
    pipeline = make_pipeline(file_root, records=records, stages=stages, batch_size=20, name="reload")
    worker = workers.start(name="reload")
    workers.wait_ready(worker)

    first = run_start(pipeline=pipeline, actor=None)
    wasm_stage = StageRun.objects.get(run=first, key="wasm")

    def some_batches_done():
        wasm_stage.refresh_from_db()
        return wasm_stage.records_out >= 40

    wait_until(some_batches_done, 120)
    first.refresh_from_db()
    assert first.status == RunStatus.RUNNING, "the first run ended before the upload; the test proves nothing"
    v2 = wasm_module_upload(name="tag", content=modules.binary(modules.VERDICTS), actor=None)
    second = run_start(pipeline=pipeline, actor=None)

    run_wait(first)
    run_wait(second)
    assert first.status == RunStatus.SUCCEEDED, (first.status_reason, workers.log_tail())
    assert second.status == RunStatus.SUCCEEDED, (second.status_reason, workers.log_tail())
    # Every batch of the first run ran version 1 (echo), although version 2 arrived while it ran.
    assert StageRun.objects.get(run=first, key="wasm").config["sha256"] == v1.sha256
    assert published(first) == records
    stage = StageRun.objects.get(run=second, key="wasm")
    assert stage.config["sha256"] == v2.sha256
    assert (stage.records_out, stage.records_filtered, stage.records_failed) == (0, 200, 200)
    # One worker process did all of it: it was never restarted.
    assert worker.poll() is None and len(workers.procs) == 1
