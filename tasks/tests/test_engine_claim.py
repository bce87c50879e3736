"""Claim, fence and lease outcomes, read from the database rows (not from how the engine builds its SQL):
who may claim a batch and when, what a claim records, and when a lease keeper gives up or stops."""

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from tasks import engine
from tasks.choices import BatchStatus, RunStatus
from tasks.models import Batch, TaskRun
from tasks.services import run_start
from tasks.tests import kinds_for_tests
from tasks.tests.factories import make_pipeline, make_records

pytestmark = pytest.mark.django_db

kinds_for_tests.register()


@pytest.fixture
def queued(doorbell, file_root):
    """A started run and the id of its first (queued) batch."""
    run = run_start(pipeline=make_pipeline(file_root, records=make_records(20), batch_size=20), actor=None)
    return run, doorbell.sent[0][0]


def test_a_claim_takes_the_lease_and_bumps_the_attempt(queued):
    run, batch_id = queued
    row = Batch.objects.get(pk=batch_id)
    assert row.status in (BatchStatus.PENDING, BatchStatus.QUEUED) and row.lease_owner in ("", None)
    before = timezone.now()
    batch = engine.batch_claim(batch_id=str(batch_id), owner="host-a:1", lease_seconds=45)
    after = timezone.now()
    assert batch is not None
    assert (batch.pk, batch.status, batch.lease_owner, batch.attempt) == (
        row.pk,
        BatchStatus.RUNNING,
        "host-a:1",
        row.attempt + 1,
    )
    assert (batch.stage_run_id, batch.index, batch.input_ref) == (row.stage_run_id, row.index, row.input_ref or {})
    assert batch._run_id == run.pk and batch._position == row.stage_run.position and batch._lease_seconds == 45
    assert before + timedelta(seconds=45) <= batch.lease_expires_at <= after + timedelta(seconds=45)
    claimed = Batch.objects.get(pk=batch_id)
    assert (claimed.status, claimed.lease_owner, claimed.attempt) == (BatchStatus.RUNNING, "host-a:1", row.attempt + 1)
    assert claimed.lease_expires_at == batch.lease_expires_at
    assert before <= claimed.started_at <= after and claimed.not_before is None


def test_the_lease_length_defaults_to_the_engine_setting(queued):
    _run, batch_id = queued
    before = timezone.now()
    batch = engine.batch_claim(batch_id=batch_id, owner="host-a:1")
    assert batch._lease_seconds == engine.engine_setting("engine_lease_seconds") == 60.0
    assert before + timedelta(seconds=60) <= batch.lease_expires_at <= timezone.now() + timedelta(seconds=60)


def test_a_batch_is_claimed_once(queued):
    _run, batch_id = queued
    first = engine.batch_claim(batch_id=batch_id, owner="host-a:1")
    assert engine.batch_claim(batch_id=batch_id, owner="host-b:2") is None
    row = Batch.objects.get(pk=batch_id)
    assert (row.lease_owner, row.attempt) == ("host-a:1", first.attempt)


@pytest.mark.parametrize("status", [BatchStatus.SUCCEEDED, BatchStatus.FAILED, BatchStatus.RUNNING])
def test_a_batch_that_is_done_or_running_is_not_claimed(queued, status):
    _run, batch_id = queued
    Batch.objects.filter(pk=batch_id).update(status=status)
    assert engine.batch_claim(batch_id=batch_id, owner="host-a:1") is None
    assert Batch.objects.get(pk=batch_id).status == status


def test_a_waiting_batch_is_claimed_only_once_its_time_has_come(queued):
    _run, batch_id = queued
    Batch.objects.filter(pk=batch_id).update(
        status=BatchStatus.WAITING, not_before=timezone.now() + timedelta(minutes=5)
    )
    assert engine.batch_claim(batch_id=batch_id, owner="host-a:1") is None
    Batch.objects.filter(pk=batch_id).update(not_before=timezone.now() - timedelta(seconds=1))
    batch = engine.batch_claim(batch_id=batch_id, owner="host-a:1")
    assert batch is not None and Batch.objects.get(pk=batch_id).not_before is None


@pytest.mark.parametrize(
    ("run_status", "claimed"),
    [
        (RunStatus.PENDING, True),
        (RunStatus.RUNNING, True),
        (RunStatus.WAITING, True),
        (RunStatus.CANCELLING, False),
        (RunStatus.CANCELLED, False),
        (RunStatus.FAILED, False),
        (RunStatus.SUCCEEDED, False),
    ],
)
def test_only_an_active_run_s_batches_are_claimed(queued, run_status, claimed):
    run, batch_id = queued
    TaskRun.objects.filter(pk=run.pk).update(status=run_status)
    assert (engine.batch_claim(batch_id=batch_id, owner="host-a:1") is not None) is claimed


def test_the_fence_is_the_attempt_the_owner_and_the_running_status(queued):
    _run, batch_id = queued
    batch = engine.batch_claim(batch_id=batch_id, owner="host-a:1")
    assert list(engine._fenced(batch)) == [Batch.objects.get(pk=batch_id)]
    for change in ({"attempt": batch.attempt + 1}, {"lease_owner": "host-b:2"}, {"status": BatchStatus.QUEUED}):
        original = {k: getattr(Batch.objects.get(pk=batch_id), k) for k in change}
        Batch.objects.filter(pk=batch_id).update(**change)
        assert not engine._fenced(batch).exists(), change
        Batch.objects.filter(pk=batch_id).update(**original)
    assert engine._fenced(batch).exists()


def test_a_lease_keeper_renews_while_it_holds_the_lease_and_notices_a_cancel(queued):
    run, batch_id = queued
    batch = engine.batch_claim(batch_id=batch_id, owner="host-a:1", lease_seconds=30)
    keeper = engine.LeaseKeeper(batch, run.pk, 30)
    assert keeper.interval == 10 and not keeper.lost and not keeper.cancelled
    assert engine.LeaseKeeper(batch, run.pk, 0.3).interval == 0.2  # never renews more often than 5 times a second
    Batch.objects.filter(pk=batch_id).update(lease_expires_at=timezone.now())
    before = timezone.now()
    keeper.renew()
    expires = Batch.objects.get(pk=batch_id).lease_expires_at
    assert before + timedelta(seconds=30) <= expires <= timezone.now() + timedelta(seconds=30)
    assert not keeper.lost and not keeper.cancelled
    keeper.check()  # nothing to stop for
    TaskRun.objects.filter(pk=run.pk).update(status=RunStatus.CANCELLING)
    keeper.renew()
    assert keeper.cancelled and not keeper.lost
    with pytest.raises(engine.Aborted):
        keeper.check()


def test_a_lease_keeper_that_lost_the_lease_stops_renewing_and_stops_the_work(queued):
    run, batch_id = queued
    batch = engine.batch_claim(batch_id=batch_id, owner="host-a:1", lease_seconds=30)
    with engine.LeaseKeeper(batch, run.pk, 30) as keeper:
        assert engine._renewer.keepers.get(id(keeper)) is keeper
        Batch.objects.filter(pk=batch_id).update(lease_owner="host-b:2")
        taken = Batch.objects.get(pk=batch_id).lease_expires_at
        keeper.renew()
        assert keeper.lost and id(keeper) not in engine._renewer.keepers
        assert Batch.objects.get(pk=batch_id).lease_expires_at == taken  # the new owner's lease is untouched
        with pytest.raises(engine.LeaseLost):
            keeper.check()
    assert id(keeper) not in engine._renewer.keepers


def test_a_lease_keeper_leaves_the_renewer_when_the_batch_ends(queued):
    run, batch_id = queued
    batch = engine.batch_claim(batch_id=batch_id, owner="host-a:1", lease_seconds=30)
    keeper = engine.LeaseKeeper(batch, run.pk, 30)
    with keeper as entered:
        assert entered is keeper and engine._renewer.keepers[id(keeper)] is keeper
    assert id(keeper) not in engine._renewer.keepers


def test_a_lease_keeper_renews_a_third_of_a_lease_after_it_starts_and_after_each_renewal(queued):
    # docs/engine.md: "a side thread renews the lease every lease/3 s".
    run, batch_id = queued
    batch = engine.batch_claim(batch_id=batch_id, owner="host-a:1", lease_seconds=30)
    before = time.monotonic()
    keeper = engine.LeaseKeeper(batch, run.pk, 30)
    assert before + 10 <= keeper.next_renewal <= time.monotonic() + 10
    before = time.monotonic()
    keeper.renew()
    assert before + 10 <= keeper.next_renewal <= time.monotonic() + 10


def test_an_error_inside_a_lease_keeper_is_not_swallowed(queued):
    run, batch_id = queued
    batch = engine.batch_claim(batch_id=batch_id, owner="host-a:1", lease_seconds=30)
    with pytest.raises(ZeroDivisionError), engine.LeaseKeeper(batch, run.pk, 30) as keeper:
        1 / 0  # noqa: B018 - the stage's own error
    assert id(keeper) not in engine._renewer.keepers


@pytest.fixture
def two_held(queued, doorbell, file_root):
    """The first batches of two runs, both claimed by the same worker (the same attempt number each)."""
    run, batch_id = queued
    other_pipeline = make_pipeline(file_root, records=make_records(20), batch_size=20, name="other")
    other_run = run_start(pipeline=other_pipeline, actor=None)
    other_id = next(b for (b, *_rest) in doorbell.sent if str(b) != str(batch_id))
    batch = engine.batch_claim(batch_id=batch_id, owner="host-a:1", lease_seconds=30)
    other = engine.batch_claim(batch_id=other_id, owner="host-a:1", lease_seconds=30)
    assert batch.attempt == other.attempt and batch.pk != other.pk
    return run, batch, other_run, other


def test_the_fence_is_this_batch_even_when_the_worker_holds_another_with_the_same_attempt(two_held):
    # A worker that lost one batch (re-queued by the reaper) while it still runs another batch of the same
    # attempt number must be fenced out of the lost one: the fence names the batch, not just owner and attempt.
    run, batch, _other_run, other = two_held
    Batch.objects.filter(pk=batch.pk).update(status=BatchStatus.QUEUED, lease_owner="")
    assert not engine._fenced(batch).exists()
    assert list(engine._fenced(other)) == [Batch.objects.get(pk=other.pk)]
    kept = Batch.objects.get(pk=other.pk).lease_expires_at
    keeper = engine.LeaseKeeper(batch, run.pk, 30)
    keeper.renew()
    assert keeper.lost
    assert Batch.objects.get(pk=other.pk).lease_expires_at == kept  # the other batch's lease is not renewed
    assert Batch.objects.get(pk=batch.pk).status == BatchStatus.QUEUED


def test_a_lease_keeper_stops_for_its_own_run_s_cancel_only(two_held):
    run, batch, other_run, _other = two_held
    TaskRun.objects.filter(pk=other_run.pk).update(status=RunStatus.CANCELLING)
    keeper = engine.LeaseKeeper(batch, run.pk, 30)
    keeper.renew()
    assert not keeper.cancelled and not keeper.lost
    keeper.check()
