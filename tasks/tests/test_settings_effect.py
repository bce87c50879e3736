"""The engine's system settings take effect where their names say (step by step, explicit clocks):
engine_crash_budget, engine_lease_seconds, engine_resend_after_seconds, worker_heartbeat_seconds, and
the core's scheduler_stale_seconds."""

from datetime import timedelta

import pytest
from django.utils import timezone

from dataflare_portal.core import duties
from dataflare_portal.core.config import config_set
from dataflare_portal.core.models import Duty
from tasks import engine
from tasks.choices import BatchStatus, RunStatus
from tasks.models import Batch, WorkerHeartbeat
from tasks.selectors import workers_overview
from tasks.services import reap, run_start
from tasks.tests.factories import make_pipeline, make_records

pytestmark = pytest.mark.django_db


def _set(admin_user, **values):
    for key, value in values.items():
        config_set(key=key, value=value, actor=admin_user)
    engine.engine_settings_forget()  # the engine keeps settings for 5 s per process


@pytest.mark.parametrize("budget", [1, 2])
def test_a_batch_crashes_the_run_after_the_crash_budget(doorbell, file_root, admin_user, budget):
    _set(admin_user, engine_crash_budget=budget)
    run = run_start(pipeline=make_pipeline(file_root, records=make_records(20), batch_size=50), actor=None)
    batch_id = doorbell.sent.pop(0)[0]
    for i in range(budget):
        run.refresh_from_db()
        assert run.status != RunStatus.CRASHED, f"crashed after {i} of {budget} lost workers"
        assert engine.batch_claim(batch_id=batch_id, owner=f"dead:{i}") is not None
        reap(now=timezone.now() + timedelta(hours=1))
    run.refresh_from_db()
    batch = Batch.objects.get(pk=batch_id)
    assert batch.crashes == budget and batch.status == BatchStatus.CRASHED
    assert run.status == RunStatus.CRASHED


@pytest.mark.parametrize("lease", [7, 300])
def test_a_claim_holds_its_batch_for_the_lease_and_the_reaper_takes_it_back_after(
    doorbell, file_root, admin_user, lease
):
    _set(admin_user, engine_lease_seconds=lease)
    run_start(pipeline=make_pipeline(file_root, records=make_records(20), batch_size=50), actor=None)
    batch_id = doorbell.sent.pop(0)[0]
    before = timezone.now()
    assert engine.batch_claim(batch_id=batch_id, owner="w:1") is not None
    after = timezone.now()
    expires = Batch.objects.get(pk=batch_id).lease_expires_at
    assert before + timedelta(seconds=lease) <= expires <= after + timedelta(seconds=lease)
    # Just inside the lease the batch stays with its worker; just past it the reaper re-queues it.
    assert reap(now=before + timedelta(seconds=lease - 1))["expired"] == 0
    assert reap(now=after + timedelta(seconds=lease + 1))["expired"] == 1
    assert Batch.objects.get(pk=batch_id).status == BatchStatus.QUEUED


@pytest.mark.parametrize("resend_after", [30, 600])
def test_a_queued_batch_nobody_picked_up_is_sent_again_after_the_setting(doorbell, file_root, admin_user, resend_after):
    _set(admin_user, engine_resend_after_seconds=resend_after)
    run_start(pipeline=make_pipeline(file_root, records=make_records(20), batch_size=50), actor=None)
    batch_id = doorbell.sent.pop(0)[0]  # the message is "lost": nobody executes it
    queued_at = Batch.objects.get(pk=batch_id).queued_at
    assert reap(now=queued_at + timedelta(seconds=resend_after - 1))["resent"] == 0
    assert doorbell.sent == []
    assert reap(now=queued_at + timedelta(seconds=resend_after + 1))["resent"] == 1
    assert [item[0] for item in doorbell.sent] == [batch_id]


@pytest.mark.parametrize(("interval", "alive"), [(10.0, True), (5.0, False)])
def test_a_worker_is_dead_after_three_silent_heartbeat_intervals(admin_user, interval, alive):
    _set(admin_user, worker_heartbeat_seconds=interval)
    now = timezone.now()
    WorkerHeartbeat.objects.create(name="w1@host", hostname="host", last_seen_at=now - timedelta(seconds=20))
    view = workers_overview(now=now)
    assert [w["alive"] for w in view["workers"]] == [alive]
    assert view["dead_after_seconds"] == 3 * interval


@pytest.mark.parametrize(("stale", "state"), [(120, "alive"), (30, "dead")])
def test_the_scheduler_is_shown_dead_after_the_stale_setting(admin_user, stale, state):
    _set(admin_user, scheduler_stale_seconds=stale)
    now = timezone.now()
    Duty.objects.update_or_create(name=duties.SCHEDULER, defaults={"last_finished_at": now - timedelta(seconds=60)})
    assert duties.duties_status(now=now)["scheduler"]["state"] == state
