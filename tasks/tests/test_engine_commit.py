"""The success transaction of a batch (`engine._batch_commit`), read from the rows it leaves behind.

Expectations come from docs/engine.md ("Batches: claim, lease, fence" and "fusion"), not from the
statements the engine builds: the commit is fenced on (id, attempt, lease owner, running) and writes
nothing when the fence fails; it records the canonical attempt, the checkpoint and the batch's counters;
adds the run's and every stage's counters once; creates the next read batch and the next stage's
batches (queued while the run is active, cancelled when it is cancelling), sends them after the commit
or hands the chained one back; stores the quarantined records and one metrics event per stage (and the
token usage); and a fused follower gets its own succeeded batch row, counters, quarantine and event.

The pipeline is read -> clean -> filter -> publish; the tests claim a real batch and commit an Outcome
written here with distinct numbers per counter, so a counter added to the wrong column shows.
"""

from datetime import timedelta

import pytest
from django.utils import timezone

from metrics.models import BatchEvent, TokenUsage
from tasks import engine
from tasks.choices import BatchStatus, RunStatus, StageRunStatus
from tasks.models import Batch, QuarantinedRecord, StageRun, TaskRun
from tasks.services import run_start
from tasks.tests.factories import STREAMING_STAGES, make_pipeline, make_records

pytestmark = pytest.mark.django_db

READ, CLEAN, FILTER, PUBLISH = 0, 1, 2, 3


@pytest.fixture
def started(doorbell, file_root, monkeypatch):
    """A started run (chained reads, no fusion), its spec and its claimed first read batch."""
    monkeypatch.setattr(engine, "PLANNED_READS_ENABLED", False)
    monkeypatch.setattr(engine, "FUSION_ENABLED", False)
    run = run_start(
        pipeline=make_pipeline(file_root, records=make_records(30), stages=STREAMING_STAGES, batch_size=10),
        actor=None,
    )
    batch_id = doorbell.sent.pop(0)[0]
    batch = engine.batch_claim(batch_id=batch_id, owner="host-a:1")
    assert batch is not None
    return run, engine.run_spec(run.pk), batch


def _quarantine(*indexes, code="bad_field"):
    return [(i, code, f"record {i} is bad", {"id": i, "text": "x"}) for i in indexes]


def _outcome(**kw) -> engine.Outcome:
    """10 in = 6 out + 3 filtered + 1 quarantined, unless told otherwise."""
    values = {
        "records_in": 10,
        "records_out": 6,
        "filtered": 3,
        "quarantined": _quarantine(4),
        "output_ref": "runs/x/0/0.1.jsonl",
        "checkpoint": {"offset": 417, "stamp": "s1"},
        "next_start": {"offset": 417, "stamp": "s1"},
        "downstream": [(0, "runs/x/0/0.1.jsonl")],
    }
    values.update(kw)
    return engine.Outcome(**values)


def _stage(run, position) -> StageRun:
    return StageRun.objects.get(run=run, position=position)


def _counters(obj) -> tuple:
    return (obj.records_in, obj.records_out, obj.records_filtered, obj.records_failed)


def _claim_next(doorbell, stage_position, owner="host-a:1"):
    """Claim the sent batch of a stage (the one the previous commit created)."""
    for item in list(doorbell.sent):
        row = Batch.objects.select_related("stage_run").get(pk=item[0])
        if row.stage_run.position == stage_position:
            doorbell.sent.remove(item)
            return engine.batch_claim(batch_id=item[0], owner=owner)
    raise AssertionError(f"no batch of stage {stage_position} was sent: {doorbell.sent}")


# ---- the batch row -----------------------------------------------------------------------------
def test_a_commit_makes_the_batch_succeeded_with_its_attempt_output_checkpoint_and_counters(started):
    run, spec, batch = started
    before = timezone.now()
    engine._batch_commit(spec, spec.stages[READ], batch, _outcome(), 1234)
    row = Batch.objects.get(pk=batch.pk)
    assert row.status == BatchStatus.SUCCEEDED
    assert row.canonical_attempt == row.attempt == batch.attempt == 1
    assert row.output_ref == "runs/x/0/0.1.jsonl"
    assert row.checkpoint == {"offset": 417, "stamp": "s1"}
    assert _counters(row) == (10, 6, 3, 1)
    assert row.duration_ms == 1234
    assert row.error == "" and row.lease_expires_at is None
    assert before <= row.finished_at <= timezone.now()
    assert row.lease_owner == "host-a:1"  # who did it stays readable


def test_a_commit_clears_the_error_of_an_earlier_failed_attempt(started):
    run, spec, batch = started
    Batch.objects.filter(pk=batch.pk).update(error="boom on attempt 0")
    engine._batch_commit(spec, spec.stages[READ], batch, _outcome(), 5)
    assert Batch.objects.get(pk=batch.pk).error == ""


# ---- the fence -----------------------------------------------------------------------------------
def _everything(run) -> tuple:
    """What a commit may change, to compare before and after a refused one."""
    return (
        sorted(Batch.objects.filter(stage_run__run=run).values_list("id", "status", "attempt", "records_in")),
        _counters(TaskRun.objects.get(pk=run.pk)),
        sorted(StageRun.objects.filter(run=run).values_list("position", "batches_done", "records_in", "status")),
        QuarantinedRecord.objects.count(),
        BatchEvent.objects.count(),
        TokenUsage.objects.count(),
    )


@pytest.mark.parametrize(
    "change",
    [
        {"lease_owner": "host-b:2"},
        {"attempt": 2},
        {"status": BatchStatus.QUEUED},
        {"status": BatchStatus.SUCCEEDED},
    ],
    ids=["other-owner", "later-attempt", "re-queued", "already-done"],
)
def test_a_commit_that_lost_its_lease_writes_nothing(started, doorbell, change):
    run, spec, batch = started
    Batch.objects.filter(pk=batch.pk).update(**change)
    before = _everything(run)
    usage = [{"model_name": "m", "model_version": "1", "requests": 1, "records": 1, "prompt_tokens": 5}]
    with pytest.raises(engine.LeaseLost):
        engine._batch_commit(spec, spec.stages[READ], batch, _outcome(usage=usage), 5)
    assert _everything(run) == before
    assert doorbell.sent == []


def test_the_same_worker_that_lost_its_lease_and_claimed_again_cannot_commit_the_old_attempt(started, doorbell):
    run, spec, old = started
    # The reaper re-queued the batch after the lease expired; the same host:pid claimed it again.
    Batch.objects.filter(pk=old.pk).update(status=BatchStatus.QUEUED, lease_expires_at=None)
    new = engine.batch_claim(batch_id=old.pk, owner=old.lease_owner)
    assert new.attempt == old.attempt + 1 and new.lease_owner == old.lease_owner
    with pytest.raises(engine.LeaseLost):
        engine._batch_commit(spec, spec.stages[READ], old, _outcome(), 5)
    assert Batch.objects.get(pk=old.pk).status == BatchStatus.RUNNING
    engine._batch_commit(spec, spec.stages[READ], new, _outcome(), 5)
    row = Batch.objects.get(pk=old.pk)
    assert (row.status, row.canonical_attempt) == (BatchStatus.SUCCEEDED, new.attempt)


def test_a_second_commit_of_the_same_attempt_is_refused_and_counts_nothing_twice(started, doorbell):
    run, spec, batch = started
    engine._batch_commit(spec, spec.stages[READ], batch, _outcome(), 5)
    after_first = _everything(run)
    sent = list(doorbell.sent)
    with pytest.raises(engine.LeaseLost):
        engine._batch_commit(spec, spec.stages[READ], batch, _outcome(), 5)
    assert _everything(run) == after_first
    assert doorbell.sent == sent
    assert Batch.objects.filter(stage_run=_stage(run, READ)).count() == 2  # batch 0 and ONE next read


# ---- counters ------------------------------------------------------------------------------------
def test_a_read_commit_adds_the_read_records_to_the_run_and_the_stage(started):
    run, spec, batch = started
    engine._batch_commit(spec, spec.stages[READ], batch, _outcome(), 5)
    # The run's input is what the read stage delivered; its output only what the last data stage did.
    run.refresh_from_db()
    assert _counters(run) == (6, 0, 3, 1)
    read = _stage(run, READ)
    assert _counters(read) == (10, 6, 3, 1)
    assert read.batches_done == 1 and read.total_batches is None
    for position in (CLEAN, FILTER, PUBLISH):
        stage = _stage(run, position)
        assert (_counters(stage), stage.batches_done) == ((0, 0, 0, 0), 0)


def test_the_last_data_stage_s_commit_is_the_run_s_output(started, doorbell):
    run, spec, batch = started
    engine._batch_commit(spec, spec.stages[READ], batch, _outcome(records_out=10, filtered=0, quarantined=[]), 5)
    clean = _claim_next(doorbell, CLEAN)
    engine._batch_commit(
        spec, spec.stages[CLEAN], clean, _outcome(records_out=9, filtered=0, quarantined=_quarantine(2)), 5
    )
    run.refresh_from_db()
    assert _counters(run) == (10, 0, 0, 1)
    flt = _claim_next(doorbell, FILTER)
    outcome = _outcome(records_in=9, records_out=5, filtered=4, quarantined=[], downstream=[])
    engine._batch_commit(spec, spec.stages[FILTER], flt, outcome, 5)
    run.refresh_from_db()
    assert _counters(run) == (10, 5, 4, 1)
    assert _counters(_stage(run, CLEAN)) == (10, 9, 0, 1)
    assert _counters(_stage(run, FILTER)) == (9, 5, 4, 0)


def test_stage_counters_add_up_over_batches(started, doorbell):
    run, spec, batch = started
    engine._batch_commit(spec, spec.stages[READ], batch, _outcome(), 5)
    second = _claim_next(doorbell, READ)
    outcome = _outcome(records_in=7, records_out=7, filtered=0, quarantined=[], downstream=[(1, "runs/x/0/1.1.jsonl")])
    engine._batch_commit(spec, spec.stages[READ], second, outcome, 5)
    read = _stage(run, READ)
    assert _counters(read) == (17, 13, 3, 1) and read.batches_done == 2
    run.refresh_from_db()
    assert _counters(run) == (13, 0, 3, 1)


def test_a_commit_adds_the_tokens_of_its_calls_to_the_run(started):
    run, spec, batch = started
    TaskRun.objects.filter(pk=run.pk).update(prompt_tokens=1, completion_tokens=2, retry_tokens=3)
    usage = [
        {
            "model_name": "m",
            "model_version": "1",
            "requests": 2,
            "records": 2,
            "prompt_tokens": 100,
            "completion_tokens": 20,
            "retry_tokens": 7,
        },
        {
            "model_name": "m",
            "model_version": "1",
            "status_code": "UNAVAILABLE",
            "requests": 1,
            "records": 1,
            "prompt_tokens": 30,
        },
        # A call that never got an answer reports no tokens at all: it adds none.
        {"model_name": "m", "model_version": "1", "status_code": "DEADLINE_EXCEEDED", "requests": 1, "records": 1},
    ]
    engine._batch_commit(spec, spec.stages[READ], batch, _outcome(usage=usage), 5)
    run.refresh_from_db()
    assert (run.prompt_tokens, run.completion_tokens, run.retry_tokens) == (131, 22, 10)


# ---- statuses ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("before", "after"),
    [
        (RunStatus.PENDING, RunStatus.RUNNING),
        (RunStatus.RUNNING, RunStatus.RUNNING),
        (RunStatus.WAITING, RunStatus.WAITING),  # waits until the reaper wakes its batches
    ],
)
def test_a_commit_sets_a_pending_run_running_and_leaves_other_statuses(started, before, after):
    run, spec, batch = started
    TaskRun.objects.filter(pk=run.pk).update(status=before)
    engine._batch_commit(spec, spec.stages[READ], batch, _outcome(), 5)
    assert TaskRun.objects.get(pk=run.pk).status == after


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (StageRunStatus.PENDING, StageRunStatus.RUNNING),
        (StageRunStatus.WAITING, StageRunStatus.RUNNING),
        (StageRunStatus.RUNNING, StageRunStatus.RUNNING),
        (StageRunStatus.FAILED, StageRunStatus.FAILED),
    ],
)
def test_a_commit_sets_its_stage_running_from_pending_or_waiting_only(started, before, after):
    run, spec, batch = started
    started_at = timezone.now() - timedelta(minutes=5)
    StageRun.objects.filter(run=run, position=READ).update(status=before, started_at=started_at)
    StageRun.objects.filter(run=run, position=CLEAN).update(started_at=None)
    engine._batch_commit(spec, spec.stages[READ], batch, _outcome(), 5)
    read = _stage(run, READ)
    assert read.status == after
    assert read.started_at == started_at  # the first commit's start is kept


def test_a_stage_s_first_commit_records_its_start(started):
    run, spec, batch = started
    StageRun.objects.filter(run=run, position=READ).update(started_at=None)
    before = timezone.now()
    engine._batch_commit(spec, spec.stages[READ], batch, _outcome(), 5)
    read = _stage(run, READ)
    assert before <= read.started_at <= timezone.now()
    assert before <= read.updated_at <= timezone.now()


# ---- new batches ---------------------------------------------------------------------------------
def test_a_read_commit_creates_the_next_read_and_the_next_stage_s_batch_and_sends_both(started, doorbell):
    run, spec, batch = started
    before = timezone.now()
    engine._batch_commit(spec, spec.stages[READ], batch, _outcome(), 5)
    nxt_read = Batch.objects.get(stage_run=_stage(run, READ), index=1)
    assert nxt_read.input_ref == {"start": {"offset": 417, "stamp": "s1"}}
    clean = Batch.objects.get(stage_run=_stage(run, CLEAN))
    assert (clean.index, clean.input_ref) == (0, {"path": "runs/x/0/0.1.jsonl"})
    for row in (nxt_read, clean):
        assert row.status == BatchStatus.QUEUED and row.attempt == 0
        assert before <= row.queued_at <= timezone.now() and row.finished_at is None
    assert sorted(doorbell.sent) == sorted([(str(nxt_read.pk), "stages", False), (str(clean.pk), "stages", False)])
    assert not Batch.objects.filter(stage_run=_stage(run, FILTER)).exists()


def test_a_downstream_input_given_as_a_dict_is_kept_as_it_is(started):
    run, spec, batch = started
    ref = {"reread": {"start": None}}
    engine._batch_commit(spec, spec.stages[READ], batch, _outcome(downstream=[(0, ref)]), 5)
    assert Batch.objects.get(stage_run=_stage(run, CLEAN)).input_ref == ref


def test_a_commit_creates_one_next_stage_batch_per_downstream_input(started, doorbell):
    run, spec, batch = started
    downstream = [(0, "runs/x/0/0.a.jsonl"), (1, "runs/x/0/0.b.jsonl")]
    engine._batch_commit(spec, spec.stages[READ], batch, _outcome(downstream=downstream), 5)
    rows = Batch.objects.filter(stage_run=_stage(run, CLEAN)).order_by("index")
    assert [(b.index, b.input_ref) for b in rows] == [(i, {"path": p}) for i, p in downstream]
    assert len(doorbell.sent) == 3


@pytest.mark.parametrize("run_status", [RunStatus.FAILED, RunStatus.CRASHED])
def test_a_stopped_run_s_new_batches_wait_pending_and_nothing_is_sent(started, doorbell, run_status):
    run, spec, batch = started
    TaskRun.objects.filter(pk=run.pk).update(status=run_status)
    engine._batch_commit(spec, spec.stages[READ], batch, _outcome(), 5)
    new = Batch.objects.filter(stage_run__run=run).exclude(pk=batch.pk)
    assert new.count() == 2
    assert {(b.status, b.queued_at, b.finished_at) for b in new} == {(BatchStatus.PENDING, None, None)}
    assert doorbell.sent == []
    assert TaskRun.objects.get(pk=run.pk).status == run_status


def test_a_cancelling_run_s_new_batches_are_born_cancelled_and_the_run_is_cancelled(started, doorbell):
    run, spec, batch = started
    TaskRun.objects.filter(pk=run.pk).update(status=RunStatus.CANCELLING)
    before = timezone.now()
    engine._batch_commit(spec, spec.stages[READ], batch, _outcome(), 5)
    new = Batch.objects.filter(stage_run__run=run).exclude(pk=batch.pk)
    assert new.count() == 2
    for row in new:
        assert row.status == BatchStatus.CANCELLED and row.queued_at is None
        assert before <= row.finished_at <= timezone.now()
    assert doorbell.sent == []
    # The committed batch was the last one in flight: the run is cancelled now.
    assert TaskRun.objects.get(pk=run.pk).status == RunStatus.CANCELLED
    assert Batch.objects.get(pk=batch.pk).status == BatchStatus.SUCCEEDED


def test_a_cancelling_run_with_another_batch_in_flight_stays_cancelling(started, doorbell):
    run, spec, batch = started
    engine._batch_commit(spec, spec.stages[READ], batch, _outcome(), 5)
    second = _claim_next(doorbell, READ)
    TaskRun.objects.filter(pk=run.pk).update(status=RunStatus.CANCELLING)
    Batch.objects.filter(stage_run=_stage(run, CLEAN)).update(status=BatchStatus.RUNNING, lease_owner="host-b:2")
    existing = set(Batch.objects.filter(stage_run__run=run).values_list("pk", flat=True))
    before = timezone.now()
    engine._batch_commit(spec, spec.stages[READ], second, _outcome(downstream=[(1, "runs/x/0/1.1.jsonl")]), 5)
    assert TaskRun.objects.get(pk=run.pk).status == RunStatus.CANCELLING
    # Its new batches (the next read and the clean batch of this output) are born cancelled, not left
    # pending for the run page to count while the batch in flight finishes.
    born = Batch.objects.filter(stage_run__run=run).exclude(pk__in=existing)
    assert sorted((b.stage_run.position, b.index) for b in born) == [(READ, 2), (CLEAN, 1)]
    for row in born:
        assert row.status == BatchStatus.CANCELLED and row.queued_at is None
        assert before <= row.finished_at <= timezone.now()
    assert not {str(b) for b, _q, _g in doorbell.sent} & {str(x.pk) for x in born}  # and never sent


def test_a_planned_read_batch_makes_no_next_read(started, doorbell):
    run, spec, batch = started
    Batch.objects.filter(pk=batch.pk).update(input_ref={"start": None, "planned": True, "size": 10})
    batch.input_ref = {"start": None, "planned": True, "size": 10}
    engine._batch_commit(spec, spec.stages[READ], batch, _outcome(), 5)
    assert list(Batch.objects.filter(stage_run=_stage(run, READ)).values_list("index", flat=True)) == [0]
    assert [Batch.objects.get(pk=b).stage_run.position for b, _q, _g in doorbell.sent] == [CLEAN]


def test_the_end_of_input_sets_the_read_total_completes_the_read_and_sizes_the_next_stage(started, doorbell):
    run, spec, batch = started
    engine._batch_commit(spec, spec.stages[READ], batch, _outcome(), 5)
    last = _claim_next(doorbell, READ)
    empty = _outcome(records_in=0, records_out=0, filtered=0, quarantined=[], downstream=[], end_of_input=True)
    before = timezone.now()
    engine._batch_commit(spec, spec.stages[READ], last, empty, 5)
    read = _stage(run, READ)
    assert (read.total_batches, read.batches_done, read.status) == (2, 2, StageRunStatus.SUCCEEDED)
    assert before <= read.finished_at <= timezone.now()
    assert Batch.objects.filter(stage_run=read).count() == 2  # no read after the end
    clean = _stage(run, CLEAN)
    assert clean.total_batches == 1 and clean.status != StageRunStatus.SUCCEEDED
    assert TaskRun.objects.get(pk=run.pk).status == RunStatus.RUNNING


def test_an_end_of_input_with_batches_still_running_completes_nothing(started, doorbell):
    run, spec, batch = started
    engine._batch_commit(spec, spec.stages[READ], batch, _outcome(), 5)
    second = _claim_next(doorbell, READ)
    # Batch 1 says the input ended at 3 batches: batch 2 is not done yet.
    second.index = 2
    Batch.objects.filter(pk=second.pk).update(index=2)
    engine._batch_commit(spec, spec.stages[READ], second, _outcome(end_of_input=True, downstream=[]), 5)
    read = _stage(run, READ)
    assert (read.total_batches, read.batches_done, read.status) == (3, 2, StageRunStatus.RUNNING)
    assert _stage(run, CLEAN).total_batches is None


def test_a_global_stage_s_result_is_stored_on_its_stage(started, doorbell):
    run, spec, batch = started
    result = {"location": "out/engine.v1.jsonl", "records": 6}
    engine._batch_commit(spec, spec.stages[READ], batch, _outcome(result=result), 5)
    assert _stage(run, READ).result == result
    assert _stage(run, CLEAN).result == {}


def test_the_last_stage_s_completion_succeeds_the_run(started, doorbell):
    run, spec, batch = started
    # Every data stage is done; publish's unit is the last batch.
    for position in (READ, CLEAN, FILTER):
        StageRun.objects.filter(run=run, position=position).update(
            status=StageRunStatus.SUCCEEDED, total_batches=1, batches_done=1
        )
    Batch.objects.filter(pk=batch.pk).update(stage_run=_stage(run, PUBLISH), index=0)
    batch.stage_run_id = _stage(run, PUBLISH).pk
    StageRun.objects.filter(run=run, position=PUBLISH).update(total_batches=1)
    TaskRun.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING)
    outcome = _outcome(records_in=6, records_out=6, filtered=0, quarantined=[], downstream=[], result={"v": 1})
    before = timezone.now()
    engine._batch_commit(spec, spec.stages[PUBLISH], batch, outcome, 5)
    publish = _stage(run, PUBLISH)
    assert (publish.status, publish.batches_done, publish.result) == (StageRunStatus.SUCCEEDED, 1, {"v": 1})
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED and before <= run.finished_at <= timezone.now()
    assert doorbell.sent == []


# ---- chaining ------------------------------------------------------------------------------------
def test_a_chained_commit_hands_back_the_next_stage_s_batch_instead_of_sending_it(started, doorbell):
    run, spec, batch = started
    chained = engine._batch_commit(spec, spec.stages[READ], batch, _outcome(), 5, chain=True)
    clean = Batch.objects.get(stage_run=_stage(run, CLEAN))
    assert chained == clean.pk and clean.status == BatchStatus.QUEUED
    nxt_read = Batch.objects.get(stage_run=_stage(run, READ), index=1)
    assert doorbell.sent == [(str(nxt_read.pk), "stages", False)]


def test_an_unchained_commit_returns_nothing(started, doorbell):
    run, spec, batch = started
    assert engine._batch_commit(spec, spec.stages[READ], batch, _outcome(), 5) is None
    assert len(doorbell.sent) == 2


def test_only_the_first_next_stage_batch_is_chained(started, doorbell):
    run, spec, batch = started
    downstream = [(0, "runs/x/0/0.a.jsonl"), (1, "runs/x/0/0.b.jsonl")]
    chained = engine._batch_commit(spec, spec.stages[READ], batch, _outcome(downstream=downstream), 5, chain=True)
    first, second = Batch.objects.filter(stage_run=_stage(run, CLEAN)).order_by("index")
    assert chained == first.pk
    assert (str(second.pk), "stages", False) in doorbell.sent and len(doorbell.sent) == 2


def test_a_next_stage_on_another_queue_is_sent_not_chained(started, doorbell):
    run, spec, batch = started
    spec.stages[CLEAN].queue = "inference"  # a model stage's queue
    chained = engine._batch_commit(spec, spec.stages[READ], batch, _outcome(), 5, chain=True)
    clean = Batch.objects.get(stage_run=_stage(run, CLEAN))
    assert chained is None
    assert (str(clean.pk), "inference", False) in doorbell.sent


def test_a_cancelling_run_chains_nothing(started, doorbell):
    run, spec, batch = started
    TaskRun.objects.filter(pk=run.pk).update(status=RunStatus.CANCELLING)
    assert engine._batch_commit(spec, spec.stages[READ], batch, _outcome(), 5, chain=True) is None


# ---- quarantine, metrics, token usage ---------------------------------------------------------------
def test_quarantined_records_are_stored_with_the_batch_attempt_and_their_reason(started):
    run, spec, batch = started
    long_code = "c" * 80
    quarantined = [(2, "bad_field", "field text is empty", {"id": 2}), (5, long_code, "too long", {"id": 5})]
    engine._batch_commit(spec, spec.stages[READ], batch, _outcome(filtered=2, quarantined=quarantined), 5)
    rows = QuarantinedRecord.objects.order_by("record_index")
    assert [(r.stage_run_id, r.batch_id, r.attempt) for r in rows] == [(_stage(run, READ).pk, batch.pk, 1)] * 2
    assert [(r.record_index, r.code, r.reason, r.record) for r in rows] == [
        (2, "bad_field", "field text is empty", {"id": 2}),
        (5, "c" * 50, "too long", {"id": 5}),
    ]


def test_a_commit_records_one_metrics_event_for_its_stage(started):
    run, spec, batch = started
    before = timezone.now()
    engine._batch_commit(spec, spec.stages[READ], batch, _outcome(), 1234)
    (event,) = BatchEvent.objects.all()
    assert (event.project_id, event.pipeline_id, event.run_id) == (run.project_id, run.pipeline_id, run.pk)
    assert event.stage_template == "read"
    assert (event.records_in, event.records_out, event.records_filtered, event.records_failed) == (10, 6, 3, 1)
    assert event.duration_ms == 1234 and event.succeeded is True
    assert event.model_version == ""
    assert before <= event.ts <= timezone.now()
    assert not TokenUsage.objects.exists()


def test_the_metrics_event_names_the_model_the_server_reported_and_the_usage_is_recorded(started):
    run, spec, batch = started
    usage = [
        {
            "model_name": "qwen",
            "model_version": "7",
            "requests": 3,
            "records": 3,
            "prompt_tokens": 90,
            "completion_tokens": 9,
            "latency_ms_sum": 30.0,
            "latency_ms_max": 12.0,
        },
        {"model_name": "qwen", "model_version": "7", "status_code": "UNAVAILABLE", "requests": 1, "records": 1},
    ]
    engine._batch_commit(spec, spec.stages[READ], batch, _outcome(usage=usage), 5)
    event = BatchEvent.objects.get()
    assert event.model_version == "qwen:7"
    rows = TokenUsage.objects.order_by("status_code")
    assert [(r.status_code, r.requests, r.records, r.prompt_tokens, r.model_version) for r in rows] == [
        ("OK", 3, 3, 90, "qwen:7"),
        ("UNAVAILABLE", 1, 1, 0, "qwen:7"),
    ]
    for r in rows:
        assert (r.project_id, r.pipeline_id, r.run_id, r.stage_template) == (
            run.project_id,
            run.pipeline_id,
            run.pk,
            "read",
        )
        assert r.ts == event.ts


# ---- fusion ----------------------------------------------------------------------------------------
def test_fused_followers_get_their_own_succeeded_rows_counters_quarantine_and_events(started, doorbell):
    run, spec, head = started
    read_out = _outcome(records_in=10, records_out=9, filtered=0, quarantined=_quarantine(1), downstream=[])
    clean_out = _outcome(
        records_in=9,
        records_out=8,
        filtered=0,
        quarantined=_quarantine(6, code="clean_err"),
        output_ref="",
        downstream=[],
        duration_ms=40,
    )
    filter_out = _outcome(
        records_in=8,
        records_out=5,
        filtered=3,
        quarantined=[],
        output_ref="runs/x/2/0.1.jsonl",
        downstream=[],
        duration_ms=70,
    )
    fused = [(spec.stages[CLEAN], clean_out), (spec.stages[FILTER], filter_out)]
    before = timezone.now()
    engine._batch_commit(spec, spec.stages[READ], head, read_out, 100, fused=fused)

    for position, (outcome, duration) in {CLEAN: (clean_out, 40), FILTER: (filter_out, 70)}.items():
        row = Batch.objects.get(stage_run=_stage(run, position))
        assert row.status == BatchStatus.SUCCEEDED and row.index == head.index
        assert row.attempt == row.canonical_attempt == head.attempt
        assert row.input_ref == {"fused_into": str(head.pk)}
        assert row.output_ref == outcome.output_ref
        assert _counters(row) == (outcome.records_in, outcome.records_out, outcome.filtered, len(outcome.quarantined))
        assert row.duration_ms == duration
        assert before <= row.started_at == row.finished_at <= timezone.now()
        assert row.lease_owner in ("", None) and row.lease_expires_at is None
    # Every stage's counters, each its own.
    assert [_counters(_stage(run, p)) for p in (READ, CLEAN, FILTER, PUBLISH)] == [
        (10, 9, 0, 1),
        (9, 8, 0, 1),
        (8, 5, 3, 0),
        (0, 0, 0, 0),
    ]
    assert [_stage(run, p).batches_done for p in (READ, CLEAN, FILTER, PUBLISH)] == [1, 1, 1, 0]
    assert [_stage(run, p).status for p in (READ, CLEAN, FILTER)] == [StageRunStatus.RUNNING] * 3
    # The run: read's output in, the last data stage's output out, every stage's filtered and failed.
    run.refresh_from_db()
    assert _counters(run) == (9, 5, 3, 2)
    # Quarantine under each stage's own batch row.
    clean_row = Batch.objects.get(stage_run=_stage(run, CLEAN))
    assert sorted(QuarantinedRecord.objects.values_list("stage_run_id", "batch_id", "record_index", "code")) == sorted(
        [(_stage(run, READ).pk, head.pk, 1, "bad_field"), (_stage(run, CLEAN).pk, clean_row.pk, 6, "clean_err")]
    )
    # One metrics event per stage, each with its own time.
    events = {e.stage_template: e for e in BatchEvent.objects.all()}
    assert sorted(events) == ["clean", "filter", "read"]
    assert [
        (events[k].records_in, events[k].records_out, events[k].duration_ms) for k in ("read", "clean", "filter")
    ] == [
        (10, 9, 100),
        (9, 8, 40),
        (8, 5, 70),
    ]
    # The next read is sent; the followers' next stage (publish) is global: no batch for it yet.
    nxt_read = Batch.objects.get(stage_run=_stage(run, READ), index=1)
    assert doorbell.sent == [(str(nxt_read.pk), "stages", False)]
    assert not Batch.objects.filter(stage_run=_stage(run, PUBLISH)).exists()


def test_fused_followers_with_equal_counters_are_each_counted(started):
    run, spec, head = started
    same = {"records_in": 4, "records_out": 4, "filtered": 0, "quarantined": [], "downstream": []}
    fused = [(spec.stages[CLEAN], _outcome(**same)), (spec.stages[FILTER], _outcome(**same))]
    engine._batch_commit(spec, spec.stages[READ], head, _outcome(**same), 5, fused=fused)
    assert [_counters(_stage(run, p)) for p in (READ, CLEAN, FILTER)] == [(4, 4, 0, 0)] * 3
    assert [_stage(run, p).batches_done for p in (READ, CLEAN, FILTER)] == [1, 1, 1]


def test_the_downstream_of_a_fused_unit_is_the_last_follower_s(started, doorbell):
    run, spec, head = started
    # read + clean fused: filter's batch comes from clean's output, on the same queue, and is chained.
    clean_out = _outcome(
        records_in=10, records_out=10, filtered=0, quarantined=[], downstream=[(0, "runs/x/1/0.jsonl")]
    )
    read_out = _outcome(records_in=10, records_out=10, filtered=0, quarantined=[], downstream=[(0, "ignored")])
    chained = engine._batch_commit(
        spec, spec.stages[READ], head, read_out, 5, chain=True, fused=[(spec.stages[CLEAN], clean_out)]
    )
    flt = Batch.objects.get(stage_run=_stage(run, FILTER))
    assert chained == flt.pk and flt.input_ref == {"path": "runs/x/1/0.jsonl"}
    assert Batch.objects.filter(stage_run=_stage(run, CLEAN)).count() == 1  # the fused row only


def test_a_fused_unit_that_ends_the_input_completes_every_stage_and_opens_the_global_stage(started, doorbell):
    run, spec, head = started
    done = {"records_in": 10, "records_out": 10, "filtered": 0, "quarantined": [], "downstream": []}
    fused = [(spec.stages[CLEAN], _outcome(**done)), (spec.stages[FILTER], _outcome(**done))]
    engine._batch_commit(spec, spec.stages[READ], head, _outcome(**done, end_of_input=True), 5, fused=fused)
    for position in (READ, CLEAN, FILTER):
        stage = _stage(run, position)
        assert (stage.status, stage.total_batches, stage.batches_done) == (StageRunStatus.SUCCEEDED, 1, 1), position
    publish = _stage(run, PUBLISH)
    unit = Batch.objects.get(stage_run=publish)
    assert publish.total_batches == 1 and unit.status == BatchStatus.QUEUED and unit.input_ref == {"from": FILTER}
    assert doorbell.sent == [(str(unit.pk), "stages", True)]
    assert TaskRun.objects.get(pk=run.pk).status == RunStatus.RUNNING


def test_a_record_quarantined_twice_in_one_attempt_is_stored_once(started):
    # Quarantined records are unique per batch, attempt and record index (docs/engine.md).
    run, spec, batch = started
    twice = [(3, "bad_field", "first", {"id": 3}), (3, "bad_field", "again", {"id": 3})]
    engine._batch_commit(spec, spec.stages[READ], batch, _outcome(filtered=2, quarantined=twice), 5)
    assert list(QuarantinedRecord.objects.values_list("batch_id", "attempt", "record_index", "reason")) == [
        (batch.pk, 1, 3, "first")
    ]
    assert Batch.objects.get(pk=batch.pk).status == BatchStatus.SUCCEEDED


def test_the_stage_before_the_last_makes_the_last_stage_s_batches(doorbell, file_root, monkeypatch):
    # read -> clean -> filter, no publish: clean's commit makes filter's batch.
    monkeypatch.setattr(engine, "PLANNED_READS_ENABLED", False)
    monkeypatch.setattr(engine, "FUSION_ENABLED", False)
    stages = STREAMING_STAGES[:2]
    run = run_start(pipeline=make_pipeline(file_root, records=make_records(10), stages=stages), actor=None)
    spec = engine.run_spec(run.pk)
    read = engine.batch_claim(batch_id=doorbell.sent.pop(0)[0], owner="host-a:1")
    engine._batch_commit(spec, spec.stages[READ], read, _outcome(quarantined=[], filtered=4), 5)
    clean = _claim_next(doorbell, CLEAN)
    downstream = [(0, "runs/x/1/0.1.jsonl")]
    engine._batch_commit(
        spec, spec.stages[CLEAN], clean, _outcome(quarantined=[], filtered=4, downstream=downstream), 5
    )
    flt = Batch.objects.get(stage_run=_stage(run, FILTER))
    assert (flt.index, flt.input_ref, flt.status) == (0, {"path": "runs/x/1/0.1.jsonl"}, BatchStatus.QUEUED)
    assert (str(flt.pk), "stages", False) in doorbell.sent


def test_a_fused_follower_whose_total_is_known_completes_with_its_last_batch(started, doorbell):
    # The head's stage goes on (no end of input), but filter already knows it has one batch: the unit
    # that commits it completes filter and opens the global stage after it.
    run, spec, head = started
    StageRun.objects.filter(run=run, position=FILTER).update(total_batches=1)
    same = {"records_in": 4, "records_out": 4, "filtered": 0, "quarantined": [], "downstream": []}
    fused = [(spec.stages[CLEAN], _outcome(**same)), (spec.stages[FILTER], _outcome(**same))]
    before = timezone.now()
    engine._batch_commit(spec, spec.stages[READ], head, _outcome(**same), 5, fused=fused)
    flt = _stage(run, FILTER)
    assert (flt.status, flt.batches_done) == (StageRunStatus.SUCCEEDED, 1)
    assert before <= flt.finished_at <= timezone.now()
    assert _stage(run, READ).status == _stage(run, CLEAN).status == StageRunStatus.RUNNING
    unit = Batch.objects.get(stage_run=_stage(run, PUBLISH))
    assert unit.status == BatchStatus.QUEUED and unit.input_ref == {"from": FILTER}
    assert (str(unit.pk), "stages", True) in doorbell.sent
    assert _stage(run, PUBLISH).total_batches == 1
