"""Publish under real faults: a real Celery worker is SIGKILLed or SIGSTOPped at named points of the
publish file write (the DF_TEST_FAULT hook of worker_main.py), and a second worker finishes the run.

After each: exactly one published version, no BUILDING rows, no stray files in the sink folder, and
the published records equal the undisturbed pipeline's. On PostgreSQL + Redis when DATABASE_URL and
REDIS_URL are set, else on the embedded default. Waits poll the database; nothing asserts on time.
"""

import os
import signal
from pathlib import Path

import pytest

from catalog.choices import DatasetVersionStatus
from catalog.models import DatasetVersion
from conftest import wait_until
from tasks.choices import RunStatus
from tasks.services import run_start
from tasks.tests import kinds_for_tests
from tasks.tests.conftest import fast_recovery, run_wait, start_victim, stopped
from tasks.tests.factories import STREAMING_STAGES, checksum, make_pipeline, make_records, published, reference_output

pytestmark = [pytest.mark.integration]

kinds_for_tests.register()


def _assert_one_clean_version(run, records, root: Path):
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    versions = list(DatasetVersion.objects.filter(dataset=run.pipeline.output_dataset).order_by("version"))
    states = [(v.version, v.status) for v in versions]
    live = [v for v in versions if v.status == DatasetVersionStatus.PUBLISHED]
    assert len(live) == 1, states
    assert not [v for v in versions if v.status == DatasetVersionStatus.BUILDING], states
    assert run.output_version_id == live[0].pk
    # The sink folder holds the published file and nothing else (no temp file, no second full copy).
    files = sorted(p.name for p in (root / "out").iterdir())
    assert files == [Path(live[0].location).name], files
    expected = reference_output(records, STREAMING_STAGES)
    out = published(run)
    assert checksum(out) == checksum(expected) and len(out) == len(expected)
    assert live[0].record_count == len(expected)


def _pipeline(file_root):
    records = make_records(3000, unique=True)
    # 15 workspace parts: the publish writes its file in 15 steps, so "writing" is mid-file.
    return records, make_pipeline(file_root, records=records, stages=STREAMING_STAGES, batch_size=200)


@pytest.mark.parametrize("point", ["reserved", "writing", "written", "renamed", "published"])
def test_it_leaves_one_version_and_no_debris_when_the_publish_holder_is_sigkilled(workers, file_root, tmp_path, point):
    fast_recovery()
    records, pipeline = _pipeline(file_root)
    victim, faults = start_victim(workers, tmp_path, point, "hang")
    run = run_start(pipeline=pipeline, actor=None)
    wait_until(lambda: (faults / f"{point}.hang").exists(), 120)
    workers.kill(victim)
    rescuer = workers.start(name="rescuer")
    workers.wait_ready(rescuer)
    run_wait(run, timeout=180)
    _assert_one_clean_version(run, records, file_root)


@pytest.mark.parametrize("point", ["writing", "written", "published"])
def test_it_publishes_once_when_the_publish_holder_resumes_after_losing_its_lease(workers, file_root, tmp_path, point):
    fast_recovery()
    records, pipeline = _pipeline(file_root)
    victim, faults = start_victim(workers, tmp_path, point, "stop")
    run = run_start(pipeline=pipeline, actor=None)
    wait_until(lambda: (faults / f"{point}.stop").exists() and stopped(victim.pid), 120)
    rescuer = workers.start(name="rescuer")
    workers.wait_ready(rescuer)
    # The stopped worker renews nothing: its lease expires, the reaper re-queues, the rescuer publishes.
    run_wait(run, timeout=180)
    assert run.status == RunStatus.SUCCEEDED, (run.status_reason, workers.log_tail())
    os.killpg(victim.pid, signal.SIGCONT)
    # The resumed worker finishes its (stale) publish call: fenced out, it must change nothing.
    wait_until(lambda: (faults / f"done.{victim.pid}").exists(), 60)
    wait_until(lambda: "lease_lost" in workers.log_tail(100_000) or "LeaseLost" in workers.log_tail(100_000), 30)
    _assert_one_clean_version(run, records, file_root)
    assert victim.poll() is None  # the resumed worker lives on
