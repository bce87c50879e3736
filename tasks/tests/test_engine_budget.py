"""The engine's per-batch SQL budget: a statement count, not a timing, so a regression fails the suite.

One chunk unit of a planned read (read -> clean -> filter fused, then the next stage's batch born) costs
one claim statement and one success transaction of a few statements, whatever the batch size and however
many stages are fused into it. Savepoints are not counted: tests run inside a transaction, so Django turns
the engine's `atomic()` into SAVEPOINT / RELEASE here, where a worker runs BEGIN / COMMIT.
"""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tasks import engine
from tasks.choices import RunStatus
from tasks.services import run_start
from tasks.tests.factories import STREAMING_STAGES, make_pipeline, make_records, published, reference_output

pytestmark = pytest.mark.django_db

# claim (1) + fenced batch update (1) + run counters (1) + stage counters of every stage of the unit (1)
# + fused stages' batch rows (1) + metrics events (1).
UNIT_STATEMENTS = 6


def _statements(ctx: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in ctx.captured_queries if "SAVEPOINT" not in q["sql"].upper()]


def _drain_counting(doorbell) -> list[list[str]]:
    per_unit = []
    while doorbell.sent:
        batch_id, _queue, _g = doorbell.sent.pop(0)
        with CaptureQueriesContext(connection) as ctx:
            engine.batch_execute(batch_id=batch_id, owner="test:1")
        per_unit.append(_statements(ctx))
    return per_unit


@pytest.mark.parametrize("fused_stages", [2, 4], ids=["two-fused", "four-fused"])
def test_a_chunk_unit_costs_one_claim_and_one_short_transaction(doorbell, file_root, fused_stages):
    stages = list(STREAMING_STAGES[:-1])
    while len(stages) < fused_stages:
        stages.append((f"filter{len(stages)}", "filter", {"rules": [{"type": "length", "field": "text", "min": 8}]}))
    stages.append(("publish", "publish", {}))
    records = make_records(500)
    pipeline = make_pipeline(file_root, records=records, stages=stages, batch_size=50, name=f"budget{fused_stages}")
    run = run_start(pipeline=pipeline, actor=None)
    # Batch 0 plans the other nine first, then every chunk is one unit; the last unit completes the
    # stages and opens the publish unit; publish is the global unit that follows.
    per_unit = _drain_counting(doorbell)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    assert published(run) == reference_output(records, stages)
    chunk_units = per_unit[1:10]  # not the planner, not the publish unit
    assert len(chunk_units) == 9
    # The last chunk unit also completes the fused stages and opens the publish unit: budget it apart.
    for statements in chunk_units[:-1]:
        assert len(statements) <= UNIT_STATEMENTS, "\n".join(statements)
    # No ORM read of the batch, run or stage rows on the hot path: every statement writes.
    for statements in chunk_units[:-1]:
        assert all(s.lstrip().upper().startswith(("UPDATE", "INSERT")) for s in statements), "\n".join(statements)


# ---- batches sized by work ---------------------------------------------------------------------
def test_the_unit_size_rule():
    size = engine.unit_size
    common = {"probe_records": 500, "probe_bytes": 500 * 200}
    # Cheap stages (20 us per record): the time target allows 12,500 records; the ceiling is lower.
    assert size(ceiling=10_000, probe_seconds=0.01, **common) == 10_000
    assert size(ceiling=100_000, probe_seconds=0.01, **common) == 12_500
    # Dear stages (2 ms per record): 125 records make a quarter second.
    assert size(ceiling=100_000, probe_seconds=1.0, **common) == 125
    # Beyond the target even for one record: one record per batch, never zero.
    assert size(ceiling=100_000, probe_seconds=500.0, **common) == 1
    # Big records (1 MB each): memory bounds the unit (32 MB of input).
    assert size(ceiling=100_000, probe_records=10, probe_seconds=0.0, probe_bytes=10 * 2**20) == 32
    # Free stages: the ceiling.
    assert size(ceiling=5_000, probe_seconds=0.0, **common) == 5_000
    # A small input is still spread over at least 16 units, but chunks never get smaller than the probe.
    assert size(ceiling=100_000, probe_seconds=0.01, remaining_bytes=200 * 160_000, **common) == 10_000
    assert size(ceiling=100_000, probe_seconds=0.01, remaining_bytes=200 * 1_000, **common) == 500
    # No probe: the ceiling.
    assert size(ceiling=700, probe_records=0, probe_seconds=0.0, probe_bytes=0) == 700


def test_a_planned_run_reads_batch_0_as_a_probe_and_the_rest_in_chunks_of_the_chosen_size(
    doorbell, file_root, monkeypatch
):
    chosen = []

    def planned_size(spec, stage, probe, seconds):
        chosen.append((probe.records_in, seconds >= 0))
        return 700

    monkeypatch.setattr(engine, "_planned_size", planned_size)
    records = make_records(3000)
    stages = list(STREAMING_STAGES)
    pipeline = make_pipeline(file_root, records=records, stages=stages, batch_size=10_000, name="sized")
    run = run_start(pipeline=pipeline, actor=None)
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    assert chosen == [(engine.PROBE_RECORDS, True)]
    read = run.stage_runs.get(key="read")
    sizes = list(read.batches.order_by("index").values_list("records_in", flat=True))
    assert sizes == [engine.PROBE_RECORDS, 700, 700, 700, 400]
    assert read.total_batches == 5
    assert published(run) == reference_output(records, stages)


def test_a_pipeline_whose_stages_do_not_all_fuse_plans_in_chunks_of_its_batch_size(doorbell, file_root, monkeypatch):
    monkeypatch.setattr(engine, "FUSION_ENABLED", False)
    monkeypatch.setattr(engine, "_planned_size", lambda *a: pytest.fail("no probe expected"))
    records = make_records(1000)
    pipeline = make_pipeline(file_root, records=records, stages=STREAMING_STAGES, batch_size=300, name="ceiling")
    run = run_start(pipeline=pipeline, actor=None)
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    read = run.stage_runs.get(key="read")
    assert list(read.batches.order_by("index").values_list("records_in", flat=True)) == [300, 300, 300, 100]
    assert published(run) == reference_output(records, STREAMING_STAGES)
