"""Real `celery beat` processes and a real worker: one run per slot (one beat, two beats at once, two tickers
racing without the duty lease), the skip and queue policies, and catch-up after a simulated downtime.

On PostgreSQL + Redis when DATABASE_URL/REDIS_URL are set, else on the embedded default (SQLite file + the
SQLite transport). Every wait polls the database with a generous timeout; nothing asserts on time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection

from conftest import wait_until
from schedules.choices import FireOutcome
from schedules.models import Schedule, ScheduleFire
from schedules.services import schedules_tick
from schedules.slots import slots_before
from tasks.choices import RunStatus
from tasks.models import TaskRun
from tasks.tests import kinds_for_tests
from tasks.tests.conftest import BASE_DIR

from .factories import make_schedule, pipeline_for

pytestmark = [pytest.mark.integration]

kinds_for_tests.register()

FAST = {"SCHEDULE_INTERVAL": "1", "SCHEDULE_MISFIRE_GRACE": "1"}
INTERVAL = 2


def start_beat(workers, name: str) -> subprocess.Popen:
    """A real `celery beat` with its own schedule file (two beats must not share one)."""
    env = {**os.environ, **workers.env, **FAST}
    log = open(workers.tmp_path / f"worker-{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
    cmd = [sys.executable, "-m", "celery", "-A", "dataflare_portal", "beat", "-l", "INFO"]
    cmd += ["--schedule", str(workers.tmp_path / f"{name}-schedule")]
    proc = subprocess.Popen(cmd, cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    workers.procs.append(proc)
    return proc


def start_worker(workers, name: str):
    proc = workers.start(name=name, extra_env=FAST)
    workers.wait_ready(proc)
    return proc


def interval_schedule(pipeline, name: str, **fields) -> Schedule:
    fields.setdefault("overlap", "parallel")
    fields.setdefault("catchup", "all")
    fields.setdefault("catchup_limit", 1000)
    return make_schedule(pipeline, name=name, kind="interval", interval_seconds=INTERVAL, cron="", **fields)


def assert_one_run_per_slot(schedule: Schedule) -> list:
    """Every fire is one slot of the schedule, started with exactly one run that names that slot."""
    fires = list(ScheduleFire.objects.filter(schedule=schedule).order_by("slot"))
    slots = [f.slot for f in fires]
    assert len(slots) == len(set(slots))
    started = [f for f in fires if f.outcome == FireOutcome.STARTED]
    runs = list(TaskRun.objects.filter(trigger__schedule=schedule.pk))
    assert len(runs) == len(started), (len(runs), len(started))
    assert sorted(r.trigger["slot"] for r in runs) == sorted(f.slot.isoformat() for f in started)
    assert {f.run_id for f in started} == {r.pk for r in runs}
    anchor = schedule.anchor_at.replace(microsecond=0)
    assert all((s - anchor).total_seconds() % INTERVAL == 0 for s in slots)
    return fires


def consecutive(fires) -> bool:
    return all((b.slot - a.slot).total_seconds() == INTERVAL for a, b in zip(fires, fires[1:], strict=False))


def _count(schedule, **filters) -> int:
    return ScheduleFire.objects.filter(schedule=schedule, **filters).count()


def test_a_real_beat_starts_exactly_one_run_per_slot(workers, file_root):
    schedule = interval_schedule(pipeline_for(file_root, n=5), "every 2 s")
    start_worker(workers, "w1")
    beat = start_beat(workers, "beat1")
    wait_until(lambda: _count(schedule) >= 5 or beat.poll() is not None, 240)
    assert beat.poll() is None, workers.log_tail()
    workers.stop_all()
    fires = assert_one_run_per_slot(schedule)
    assert len(fires) >= 5 and consecutive(fires), [f.slot for f in fires]
    assert all(f.outcome == FireOutcome.STARTED for f in fires)


def test_two_beats_at_once_still_start_one_run_per_slot(workers, file_root):
    schedule = interval_schedule(pipeline_for(file_root, n=5), "every 2 s, two beats")
    start_worker(workers, "w1")
    start_worker(workers, "w2")
    beats = [start_beat(workers, "beat-a"), start_beat(workers, "beat-b")]

    def both_beats_ticked() -> bool:
        # Each beat's log shows its own "Sending due task ... (schedules.tick)".
        logs = [(workers.tmp_path / f"worker-{n}.log").read_text(errors="replace") for n in ("beat-a", "beat-b")]
        return all("schedules.tick" in text for text in logs)

    wait_until(lambda: (_count(schedule) >= 6 and both_beats_ticked()) or any(b.poll() is not None for b in beats), 240)
    assert all(b.poll() is None for b in beats), workers.log_tail()
    # A few more slots while both beats send ticks.
    seen = _count(schedule)
    wait_until(lambda: _count(schedule) >= seen + 3, 240)
    workers.stop_all()
    fires = assert_one_run_per_slot(schedule)
    assert len(fires) >= 6 and consecutive(fires), [f.slot for f in fires]


def test_two_tickers_racing_without_the_lease_fire_each_slot_once(shared_db, file_root, monkeypatch):
    """The duty lease usually keeps ticks apart; the slot key holds even when it does not."""
    from tasks import engine

    monkeypatch.setattr(engine, "dispatch", lambda items: None)  # no broker here: rows only
    pipeline = pipeline_for(file_root, n=5)
    schedules = [interval_schedule(pipeline, f"race {i}") for i in range(3)]
    for s in schedules:  # twenty missed slots each
        Schedule.objects.filter(pk=s.pk).update(
            anchor_at=s.anchor_at - timedelta(seconds=60),
            last_slot=s.last_slot - timedelta(seconds=40),
            next_fire_at=s.last_slot - timedelta(seconds=38),
        )
        s.refresh_from_db()
    barrier = threading.Barrier(4)
    errors = []

    def ticker():
        try:
            barrier.wait(timeout=60)
            schedules_tick()
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=ticker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    for s in schedules:
        fires = assert_one_run_per_slot(s)
        assert len(fires) >= 20 and consecutive(fires)


def test_skip_and_queue_policies_under_a_real_beat(workers, file_root):
    switch = file_root / "hold"
    switch.touch()
    held = [("hold", "test_wait", {"switch": str(switch), "retry_after": 0.2}), ("publish", "publish", {})]
    skipper = interval_schedule(pipeline_for(file_root, name="skip", n=5, stages=held), "skip", overlap="skip")
    queuer = interval_schedule(pipeline_for(file_root, name="queue", n=5, stages=held), "queue", overlap="queue")
    start_worker(workers, "w1")
    start_beat(workers, "beat1")
    wait_until(
        lambda: _count(skipper, outcome=FireOutcome.SKIPPED) >= 3 and _count(queuer, outcome=FireOutcome.QUEUED) >= 3,
        240,
    )
    # While the first run is held, later slots are skipped (with the run named) or queued: no second run.
    assert TaskRun.objects.filter(pipeline=skipper.pipeline).count() == 1
    assert TaskRun.objects.filter(pipeline=queuer.pipeline).count() == 1
    first = TaskRun.objects.get(pipeline=queuer.pipeline)
    skipped = ScheduleFire.objects.filter(schedule=skipper, outcome=FireOutcome.SKIPPED).first()
    assert str(TaskRun.objects.get(pipeline=skipper.pipeline).pk) in skipped.reason
    oldest_queued = ScheduleFire.objects.filter(schedule=queuer, outcome=FireOutcome.QUEUED).order_by("slot").first()
    switch.unlink()
    # The held run ends; beat's next tick starts the oldest queued slot.
    wait_until(lambda: ScheduleFire.objects.get(pk=oldest_queued.pk).outcome == FireOutcome.STARTED, 240)
    first.refresh_from_db()
    assert first.status == RunStatus.SUCCEEDED, (first.status_reason, workers.log_tail())
    workers.stop_all()
    oldest_queued.refresh_from_db()
    assert oldest_queued.run.trigger["slot"] == oldest_queued.slot.isoformat()
    assert oldest_queued.run.created_at >= first.finished_at
    for s in (skipper, queuer):
        assert_one_run_per_slot(s)


def test_catch_up_after_a_simulated_downtime_follows_each_policy(workers, file_root):
    pipeline = pipeline_for(file_root, n=5)
    every = interval_schedule(pipeline, "all, limit 3", catchup="all", catchup_limit=3)
    latest = interval_schedule(pipeline, "latest", catchup="latest")
    none = interval_schedule(pipeline, "none", catchup="none")
    start_worker(workers, "w1")
    start_beat(workers, "beat1")
    wait_until(lambda: all(_count(s) >= 2 for s in (every, latest, none)), 240)
    # Downtime: beat and the worker stop (nobody ticks), slots pass.
    workers.stop_all()
    watermarks = {s.pk: Schedule.objects.get(pk=s.pk).last_slot for s in (every, latest, none)}
    down_at = time.time()
    wait_until(lambda: time.time() - down_at > 8 * INTERVAL, 60, interval=0.5)
    restarted_at = TaskRun.objects.order_by("-created_at").values_list("created_at", flat=True).first()
    start_worker(workers, "w2")
    start_beat(workers, "beat2")
    wait_until(lambda: _count(every, started_at__gt=restarted_at) >= 3, 240)
    workers.stop_all()
    # The first tick after the restart: its `now` is the start time of the first fire it made.
    tick_at = (
        ScheduleFire.objects.filter(schedule=every, started_at__gt=restarted_at)
        .order_by("started_at")
        .first()
        .started_at
    )
    for s, expected_count in ((every, 3), (latest, 1), (none, None)):
        s.refresh_from_db()
        due = slots_before(s, tick_at, watermarks[s.pk], 1000)  # newest first
        assert len(due) >= 7, (s.name, due)
        fired = set(
            ScheduleFire.objects.filter(schedule=s, slot__gt=watermarks[s.pk], slot__lte=tick_at).values_list(
                "slot", flat=True
            )
        )
        if expected_count is None:
            # Catch-up none: only a slot within the grace of the tick fires, never one missed during the stop.
            expected = (
                {due[0]} if (tick_at - due[0]).total_seconds() <= float(FAST["SCHEDULE_MISFIRE_GRACE"]) else set()
            )
        else:
            expected = set(due[:expected_count])
        assert fired == expected, (s.name, sorted(fired), due[:4], tick_at)
        assert_one_run_per_slot(s)
    late = ScheduleFire.objects.filter(schedule=every, slot__in=list(due_every_older_than(every, tick_at, watermarks)))
    assert not late.exists()


def due_every_older_than(schedule, tick_at, watermarks) -> list:
    """The missed slots of a schedule that its catch-up limit left out."""
    return slots_before(schedule, tick_at, watermarks[schedule.pk], 1000)[schedule.catchup_limit :]
