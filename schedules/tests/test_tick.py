"""The tick in-process: one run per slot, the overlap policies, catch-up after downtime, pause and resume."""

import pytest

from schedules.choices import FireOutcome
from schedules.models import Schedule, ScheduleFire
from schedules.services import schedule_pause, schedule_preview, schedule_resume, schedules_tick
from tasks.choices import RunStatus
from tasks.models import TaskRun
from tasks.tests import kinds_for_tests

from .factories import make_schedule, pipeline_for, utc

pytestmark = pytest.mark.django_db

kinds_for_tests.register()
T0 = utc(2026, 6, 1, 8, 0, 30)


def test_it_starts_one_run_per_slot_however_often_it_ticks(doorbell, file_root):
    s = make_schedule(pipeline_for(file_root), now=T0, overlap="parallel")
    assert s.next_fire_at == utc(2026, 6, 1, 8, 1)
    assert schedules_tick(now=T0)["fired"] == 0
    first = schedules_tick(now=utc(2026, 6, 1, 8, 1, 2))
    assert first["started"] == 1
    for second in (3, 10, 59):
        assert schedules_tick(now=utc(2026, 6, 1, 8, 1, second))["fired"] == 0
    assert schedules_tick(now=utc(2026, 6, 1, 8, 2, 1))["started"] == 1
    fires = list(ScheduleFire.objects.order_by("slot"))
    assert [f.slot for f in fires] == [utc(2026, 6, 1, 8, 1), utc(2026, 6, 1, 8, 2)]
    assert TaskRun.objects.count() == 2
    run = fires[0].run
    assert run.trigger == {"kind": "schedule", "schedule": s.pk, "name": s.name, "slot": "2026-06-01T08:01:00+00:00"}
    s.refresh_from_db()
    assert s.last_outcome == FireOutcome.STARTED and s.next_fire_at == utc(2026, 6, 1, 8, 3)
    doorbell.drain()
    assert TaskRun.objects.filter(status=RunStatus.SUCCEEDED).count() == 2


def test_it_fires_a_slot_once_even_when_the_watermark_is_lost(doorbell, file_root):
    # A beat restarted from an old copy of the row (or a second beat) re-reads slots that already fired.
    s = make_schedule(pipeline_for(file_root), now=T0, overlap="parallel")
    schedules_tick(now=utc(2026, 6, 1, 8, 1, 1))
    Schedule.objects.filter(pk=s.pk).update(last_slot=T0, next_fire_at=utc(2026, 6, 1, 8, 1))
    assert schedules_tick(now=utc(2026, 6, 1, 8, 1, 5))["fired"] == 0
    assert TaskRun.objects.count() == 1 and ScheduleFire.objects.count() == 1


def test_skip_policy_records_the_skipped_slot_with_its_reason(doorbell, file_root):
    make_schedule(pipeline_for(file_root), now=T0, overlap="skip")
    schedules_tick(now=utc(2026, 6, 1, 8, 1, 1))
    running = TaskRun.objects.get()
    out = schedules_tick(now=utc(2026, 6, 1, 8, 2, 1))
    assert out["skipped"] == 1 and TaskRun.objects.count() == 1
    skipped = ScheduleFire.objects.get(slot=utc(2026, 6, 1, 8, 2))
    assert skipped.outcome == FireOutcome.SKIPPED and skipped.run is None
    assert str(running.pk) in skipped.reason and "still going" in skipped.reason
    doorbell.drain()
    assert schedules_tick(now=utc(2026, 6, 1, 8, 3, 1))["started"] == 1


def test_queue_policy_starts_the_queued_slot_when_the_previous_run_ends(doorbell, file_root):
    make_schedule(pipeline_for(file_root), now=T0, overlap="queue")
    schedules_tick(now=utc(2026, 6, 1, 8, 1, 1))
    first = TaskRun.objects.get()
    out = schedules_tick(now=utc(2026, 6, 1, 8, 2, 1))
    assert out["queued"] == 1 and TaskRun.objects.count() == 1
    queued = ScheduleFire.objects.get(slot=utc(2026, 6, 1, 8, 2))
    assert queued.outcome == FireOutcome.QUEUED and str(first.pk) in queued.reason
    # Still running: a tick starts nothing.
    assert schedules_tick(now=utc(2026, 6, 1, 8, 2, 20))["dequeued"] == 0
    doorbell.drain()
    first.refresh_from_db()
    assert first.status == RunStatus.SUCCEEDED
    out = schedules_tick(now=utc(2026, 6, 1, 8, 2, 30))
    assert out["dequeued"] == 1
    queued.refresh_from_db()
    assert queued.outcome == FireOutcome.STARTED and queued.run is not None and queued.reason == ""
    assert queued.run.trigger["slot"] == "2026-06-01T08:02:00+00:00"


def test_parallel_policy_starts_even_while_a_run_is_going(doorbell, file_root):
    make_schedule(pipeline_for(file_root), now=T0, overlap="parallel")
    schedules_tick(now=utc(2026, 6, 1, 8, 1, 1))
    schedules_tick(now=utc(2026, 6, 1, 8, 2, 1))
    assert TaskRun.objects.filter(status=RunStatus.RUNNING).count() == 2


@pytest.mark.parametrize(
    ("catchup", "limit", "expected"),
    [
        ("none", 10, []),
        ("latest", 10, [utc(2026, 6, 1, 8, 30)]),
        ("all", 10, [utc(2026, 6, 1, 8, m) for m in range(21, 31)]),
        ("all", 3, [utc(2026, 6, 1, 8, 28), utc(2026, 6, 1, 8, 29), utc(2026, 6, 1, 8, 30)]),
    ],
)
def test_catch_up_after_downtime_follows_the_policy(doorbell, file_root, catchup, limit, expected, settings):
    settings.SCHEDULE_MISFIRE_GRACE = 5.0
    make_schedule(pipeline_for(file_root), now=T0, overlap="parallel", catchup=catchup, catchup_limit=limit)
    # Down from 08:00:30 to 08:30:10: slots 08:01 ... 08:30 were missed (the newest is 10 s late, past the grace).
    schedules_tick(now=utc(2026, 6, 1, 8, 30, 10))
    fired = sorted(ScheduleFire.objects.values_list("slot", flat=True))
    assert fired == expected
    assert TaskRun.objects.count() == len(expected)
    if catchup == "all":
        assert all(f.reason_code == "caught_up" for f in ScheduleFire.objects.all())
    # Back on time: the next slot fires normally, nothing old fires again.
    schedules_tick(now=utc(2026, 6, 1, 8, 31, 2))
    assert ScheduleFire.objects.count() == len(expected) + 1


def test_catch_up_none_still_fires_a_slot_that_is_only_a_little_late(doorbell, file_root, settings):
    settings.SCHEDULE_MISFIRE_GRACE = 60.0
    make_schedule(pipeline_for(file_root), now=T0, catchup="none")
    assert schedules_tick(now=utc(2026, 6, 1, 8, 1, 40))["started"] == 1


def test_pause_stops_fires_and_resume_does_not_catch_up_the_pause(doorbell, file_root):
    s = make_schedule(pipeline_for(file_root), now=T0, catchup="all")
    schedule_pause(schedule=s, actor=None)
    assert schedules_tick(now=utc(2026, 6, 1, 8, 5, 1))["fired"] == 0
    schedule_resume(schedule=s, actor=None, now=utc(2026, 6, 1, 8, 5, 30))
    assert schedules_tick(now=utc(2026, 6, 1, 8, 5, 40))["fired"] == 0
    assert schedules_tick(now=utc(2026, 6, 1, 8, 6, 1))["started"] == 1
    assert list(ScheduleFire.objects.values_list("slot", flat=True)) == [utc(2026, 6, 1, 8, 6)]
    from dataflare_portal.core.models import AuditLogEntry

    assert set(AuditLogEntry.objects.filter(object_type__icontains="schedule").values_list("action", flat=True)) >= {
        "create",
        "pause",
        "unpause",
    }


def test_preview_lists_the_next_five_fire_times_in_the_zone(db, file_root):
    s = make_schedule(pipeline_for(file_root), now=T0, cron="0 2 * * *", timezone="Asia/Shanghai")
    got = schedule_preview(schedule=s, now=utc(2026, 6, 1, 17, 0))
    assert got == [utc(2026, 6, d, 18) for d in range(1, 6)]


def test_a_refused_run_is_recorded_as_a_failed_fire(doorbell, file_root):
    pipeline = pipeline_for(file_root)
    make_schedule(pipeline, now=T0)
    pipeline.runs_paused, pipeline.paused_reason = True, "budget breached"
    pipeline.save()
    out = schedules_tick(now=utc(2026, 6, 1, 8, 1, 1))
    assert out["failed"] == 1 and TaskRun.objects.count() == 0
    fire = ScheduleFire.objects.get()
    assert fire.outcome == FireOutcome.FAILED and "budget breached" in fire.reason
