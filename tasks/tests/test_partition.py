"""Partitioned global stages (tasks/partition.py): the pure pieces, then the engine's three phases in-process.

The pure tests run the map, reduce and write steps with the real helpers and the real dedup kind over
hand-made chunks and compare with the one-unit `run_global`; the engine tests drive a run through the
in-process doorbell and compare its published bytes with the same run made as one unit.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dataflare_portal.core import jsonl
from pipelines.stagekinds import StageContext, registry
from tasks import engine, partition
from tasks.choices import BatchStatus, RunStatus, StageRunStatus
from tasks.models import Batch, StageRun
from tasks.services import run_start
from tasks.tests.factories import (
    STANDARD_STAGES,
    make_pipeline,
    make_records,
    published,
    published_bytes,
    reference_output,
)

DEDUP = registry.get("dedup")


def _one_unit(chunks: list[list[dict]], config: dict, tmp_path: Path) -> list[dict]:
    ctx = StageContext(config=config, stage_key="dedup", workspace=tmp_path / "one")
    return [r for res in DEDUP.run_global(iter(chunks), ctx) for r in res.records]


def _partitioned(chunks: list[list[dict]], config: dict, n: int, tmp_path: Path, groups: int = 2) -> list[dict]:
    """map -> reduce -> write with the engine's helpers and files, as the batches do it (no database)."""
    ctx = StageContext(config=config, stage_key="dedup")
    parts = []
    for i, chunk in enumerate(chunks):
        path = tmp_path / "in" / f"{i}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jsonl.dumps_lines(chunk))
        parts.append(path)
    bounds = partition.group_bounds(len(parts), groups)
    key_dirs = []
    for g, (a, b) in enumerate(bounds):  # map
        entries = [[] for _ in range(n)]
        position = 0
        for path in parts[a:b]:
            records = jsonl.loads_lines(path.read_bytes())
            for key in DEDUP.record_keys(records, ctx):
                entries[partition.partition_of(key, n)].append((position, key))
                position += 1
        folder = tmp_path / "keys" / f"m{g}"
        partition.keys_write(folder, entries)
        key_dirs.append(folder)
    drop_files = []
    for p in range(n):  # reduce
        entries = (((g, pos), key) for g, folder in enumerate(key_dirs) for pos, key in partition.keys_read(folder, p))
        dropped: dict[int, list[int]] = {}
        for g, pos in DEDUP.reduce_partition(entries, ctx):
            dropped.setdefault(g, []).append(pos)
        path = tmp_path / "drops" / f"r{p}"
        partition.drops_write(path, len(key_dirs), dropped)
        drop_files.append(path)
    out = b""
    for g, (a, b) in enumerate(bounds):  # write
        drop = set()
        for path in drop_files:
            drop.update(partition.drops_read(path, g))
        seen = 0
        for path in parts[a:b]:
            kept, lines, _k = partition.filter_lines(path.read_bytes(), seen, drop)
            out += kept
            seen += lines
    return jsonl.loads_lines(out)


def _chunks(records: list[dict], size: int) -> list[list[dict]]:
    return [records[i : i + size] for i in range(0, len(records), size)]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64])
def test_it_keeps_the_input_order_and_the_one_unit_output_for_any_partition_count(n, tmp_path):
    records = make_records(700)
    expected = _one_unit(_chunks(records, 100), {"fields": ["text"]}, tmp_path)
    assert len(expected) < len(records)  # the input has duplicates to drop
    got = _partitioned(_chunks(records, 100), {"fields": ["text"]}, n, tmp_path, groups=3)
    assert got == expected
    ids = [r["id"] for r in got]
    assert ids == sorted(ids)


def test_the_first_occurrence_wins_across_chunks_groups_and_partitions(tmp_path):
    # Equal after normalising (case, spaces, NFKC): one key. Its first occurrence is in the last chunk of
    # group 0; later ones in group 1 and in the same chunk. Other keys land in other partitions.
    chunks = [
        [{"id": 0, "text": "alpha"}, {"id": 1, "text": "beta"}],
        [{"id": 2, "text": "Gamma  Delta"}, {"id": 3, "text": "gamma delta"}],
        [{"id": 4, "text": "ＧＡＭＭＡ delta"}, {"id": 5, "text": "alpha"}, {"id": 6, "text": "epsilon"}],
        [{"id": 7, "text": "beta"}, {"id": 8, "text": "zeta"}],
    ]
    got = _partitioned(chunks, {"fields": ["text"]}, 4, tmp_path, groups=2)
    assert [r["id"] for r in got] == [0, 1, 2, 6, 8]
    assert got == _one_unit(chunks, {"fields": ["text"]}, tmp_path)


def test_empty_partitions_and_empty_chunks_change_nothing(tmp_path):
    chunks = [[{"id": 0, "text": "one"}], [], [{"id": 1, "text": "one"}, {"id": 2, "text": "two"}], []]
    # 64 partitions for 3 records: almost every partition is empty, and so are two input parts.
    got = _partitioned(chunks, {"fields": ["text"]}, 64, tmp_path, groups=4)
    assert [r["id"] for r in got] == [0, 2]
    sizes = [len(list(partition.keys_read(tmp_path / "keys" / f"m{g}", p))) for g in range(4) for p in range(64)]
    assert sum(sizes) == 3 and sizes.count(0) == 4 * 64 - 3
    assert _partitioned([[], []], {"fields": ["text"]}, 3, tmp_path / "e", groups=2) == []


def test_one_partition_holds_every_key(tmp_path):
    records = make_records(300)
    got = _partitioned(_chunks(records, 50), {"fields": ["text"]}, 1, tmp_path, groups=6)
    assert got == _one_unit(_chunks(records, 50), {"fields": ["text"]}, tmp_path)
    assert all(partition.partition_of(bytes([i]) * 8, 1) == 0 for i in range(50))


def test_distinct_keys_sharing_a_partition_are_both_kept(tmp_path):
    # A partition holds many keys: only equal keys are duplicates, not keys that hash to the same partition.
    records = [{"id": i, "text": f"record number {i}"} for i in range(40)]
    keys = DEDUP.record_keys(records, StageContext(config={"fields": ["text"]}))
    by_partition: dict[int, int] = {}
    for key in keys:
        p = partition.partition_of(key, 2)
        by_partition[p] = by_partition.get(p, 0) + 1
    assert max(by_partition.values()) > 1
    got = _partitioned(_chunks(records, 7), {"fields": ["text"]}, 2, tmp_path, groups=3)
    assert [r["id"] for r in got] == list(range(40))


def test_equal_keys_from_several_fields_collide_and_field_order_matters(tmp_path):
    config = {"fields": ["title", "text"]}
    chunks = [
        [{"id": 0, "title": "A", "text": "b"}, {"id": 1, "title": "a", "text": " B "}],
        [{"id": 2, "title": "b", "text": "a"}, {"id": 3, "title": None, "text": "b"}, {"id": 4, "text": "b"}],
    ]
    got = _partitioned(chunks, config, 3, tmp_path, groups=2)
    assert [r["id"] for r in got] == [0, 2, 3]
    assert got == _one_unit(chunks, config, tmp_path)


def test_a_lone_surrogate_gets_a_key_instead_of_failing_the_chunk():
    # Decoded JSON may hold one ("\\ud800"); encoding it strictly raised inside the unit that emits keys.
    records = [{"text": "a\ud800b"}, {"text": "a\ud800b"}, {"text": "ab"}]
    keys = DEDUP.record_keys(records, StageContext(config={"fields": ["text"]}))
    assert keys[0] == keys[1] != keys[2]


def test_the_keys_and_drops_files_read_back_what_was_written(tmp_path):
    entries = [[(0, b"k" * 32), (5, b"")], [], [(70000, b"\x00\xff" * 300)]]
    partition.keys_write(tmp_path / "m0", entries)
    for p, expect in enumerate(entries):
        assert list(partition.keys_read(tmp_path / "m0", p)) == expect
    count = partition.drops_write(tmp_path / "r0", 3, {0: [9, 2], 2: [70000]})
    assert count == 3
    assert [partition.drops_read(tmp_path / "r0", g) for g in range(3)] == [[2, 9], [], [70000]]
    with pytest.raises(ValueError):
        partition.drops_read(tmp_path / "r0", 3)
    assert partition.group_bounds(5, 2) == [(0, 2), (2, 5)]
    assert partition.group_bounds(2, 8) == [(0, 1), (1, 2)]


def test_the_default_partition_count_follows_the_live_workers():
    assert DEDUP.partitions({}, 0) == 2
    assert DEDUP.partitions({}, 3) == 6
    assert DEDUP.partitions({}, 40) == 16
    assert DEDUP.partitions({"partitions": 1}, 40) == 1
    assert DEDUP.partitions({"partitions": 64, "near_duplicate": {"enabled": True}}, 4) == 0


@pytest.mark.parametrize(
    ("value", "ok"), [(1, True), (64, True), (0, False), (65, False), ("4", False), (2.5, False), (None, False)]
)
def test_the_partitions_setting_is_an_integer_from_1_to_64(value, ok):
    from pipelines.stagekinds import StageConfigError

    if ok:
        DEDUP.validate_config({"partitions": value})
        return
    with pytest.raises(StageConfigError) as info:
        DEDUP.validate_config({"partitions": value})
    assert info.value.path == "$.partitions"


_SIGNATURE_SCRIPT = """
import json, sys
from pathlib import Path
from pipelines.stagekinds.dedup import _SeenStore
from pipelines.stagekinds import StageContext, registry
store = _SeenStore(Path(sys.argv[1]), {"enabled": True, "num_perm": 64, "bands": 16, "threshold": 0.5})
sig = store._signature("the quick brown fox jumps over the lazy dog")
store.close()
texts = ["the quick brown fox jumps over the lazy dog %d" % (i % 7) + " x" * (i % 3) for i in range(60)]
records = [{"id": i, "text": t} for i, t in enumerate(texts)]
ctx = StageContext(config={"near_duplicate": {"enabled": True, "threshold": 0.5}}, workspace=Path(sys.argv[2]))
kept = [r["id"] for res in registry.get("dedup").run_global(iter([records]), ctx) for r in res.records]
print(json.dumps({"sig": sig, "kept": kept}))
"""


def test_near_duplicate_signatures_are_the_same_in_every_process(tmp_path, settings):
    """MinHash used the salted built-in hash(): another PYTHONHASHSEED gave other signatures (and drops)."""
    import json
    import os

    outputs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "DJANGO_SETTINGS_MODULE": "dataflare_portal.settings"}
        code = "import django; django.setup()\n" + _SIGNATURE_SCRIPT
        proc = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / f"s{seed}.sqlite3"), str(tmp_path / f"w{seed}")],
            cwd=settings.BASE_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        outputs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert outputs[0]["sig"] == outputs[1]["sig"]
    assert outputs[0]["kept"] == outputs[1]["kept"]
    assert len(outputs[0]["kept"]) < 60  # near-duplicates were found and dropped


# ---- the engine's phases, in-process --------------------------------------------------------------
def _dedup_stages(partitions: int | None):
    config = {"fields": ["text"]} if partitions is None else {"fields": ["text"], "partitions": partitions}
    return [s if s[1] != "dedup" else ("dedup", "dedup", config) for s in STANDARD_STAGES]


@pytest.mark.django_db
@pytest.mark.parametrize("partitions", [3, 1, None])
def test_a_partitioned_run_publishes_the_bytes_of_the_one_unit_run(doorbell, file_root, monkeypatch, partitions):
    records = make_records(1500)
    stages = _dedup_stages(partitions)
    pipeline = make_pipeline(file_root, records=records, stages=stages, batch_size=100, name="parted")
    run = run_start(pipeline=pipeline, actor=None)
    results = doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, (run.status_reason, results)
    dedup = StageRun.objects.get(run=run, key="dedup")
    plan = dedup.result["partitions"]
    n = partitions or 2  # no live worker in this test: the default's lower bound
    assert plan["partitions"] == n and plan["phase"] == "write"
    groups = plan["groups"]
    # The clean stage's units emitted the keys with their chunks: no map phase.
    phases = [b.input_ref["phase"] for b in Batch.objects.filter(stage_run=dedup).order_by("index")]
    assert phases == ["reduce"] * n + ["write"] * groups and plan["maps"] == 0
    assert dedup.total_batches == dedup.batches_done == groups + n
    assert dedup.status == StageRunStatus.SUCCEEDED
    assert dedup.records_in == dedup.records_out + dedup.records_filtered + dedup.records_failed
    assert dedup.records_filtered > 0
    for b in Batch.objects.filter(stage_run__run=run):
        assert b.records_in == b.records_out + b.records_filtered + b.records_failed
    assert published(run) == reference_output(records, stages)
    partitioned_bytes = published_bytes(run)

    monkeypatch.setattr(engine, "PARTITIONED_ENABLED", False)
    again = make_pipeline(file_root, records=records, stages=stages, batch_size=100, name="unit")
    unit_run = run_start(pipeline=again, actor=None)
    doorbell.drain()
    unit_run.refresh_from_db()
    assert unit_run.status == RunStatus.SUCCEEDED
    unit = StageRun.objects.get(run=unit_run, key="dedup")
    assert unit.total_batches == 1 and "partitions" not in unit.result
    assert published_bytes(unit_run) == partitioned_bytes
    assert (unit.records_in, unit.records_out, unit.records_filtered) == (
        dedup.records_in,
        dedup.records_out,
        dedup.records_filtered,
    )
    unit_run.refresh_from_db()
    run.refresh_from_db()
    assert (run.records_in, run.records_out, run.records_filtered) == (
        unit_run.records_in,
        unit_run.records_out,
        unit_run.records_filtered,
    )


@pytest.mark.django_db
def test_a_partitioned_stage_after_a_global_one_maps_its_input_first(doorbell, file_root):
    """A global stage's parts carry no keys: map batches take them, then reduce and write as usual."""
    records = make_records(900)
    stages = [
        ("near", "dedup", {"fields": ["text"], "near_duplicate": {"enabled": True, "threshold": 0.95}}),
        ("exact", "dedup", {"fields": ["lang", "text"], "normalize": {"lowercase": False}, "partitions": 3}),
        ("publish", "publish", {}),
    ]
    pipeline = make_pipeline(file_root, records=records, stages=stages, batch_size=100)
    run = run_start(pipeline=pipeline, actor=None)
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    exact = StageRun.objects.get(run=run, key="exact")
    plan = exact.result["partitions"]
    assert plan["maps"] == plan["groups"] > 1 and plan["partitions"] == 3
    phases = [b.input_ref["phase"] for b in Batch.objects.filter(stage_run=exact).order_by("index")]
    assert phases == ["map"] * plan["groups"] + ["reduce"] * 3 + ["write"] * plan["groups"]
    assert published(run) == reference_output(records, stages)
    assert exact.records_in == exact.records_out + exact.records_filtered


@pytest.mark.django_db
def test_a_per_record_stage_after_a_partitioned_dedup_streams_from_its_write_batches(doorbell, file_root):
    records = make_records(600)
    stages = [
        ("dedup", "dedup", {"fields": ["text"], "partitions": 2}),
        ("filter", "filter", {"rules": [{"type": "length", "field": "text", "min": 8}]}),
        ("publish", "publish", {}),
    ]
    pipeline = make_pipeline(file_root, records=records, stages=stages, batch_size=100)
    run = run_start(pipeline=pipeline, actor=None)
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    assert published(run) == reference_output(records, stages)
    flt = StageRun.objects.get(run=run, key="filter")
    dedup = StageRun.objects.get(run=run, key="dedup")
    assert flt.total_batches == dedup.result["partitions"]["groups"]
    assert flt.records_in == dedup.records_out


@pytest.mark.django_db
def test_a_stale_attempt_of_a_partition_cannot_commit_and_the_redo_decides_the_same(doorbell, file_root):
    from datetime import timedelta

    from django.utils import timezone

    from tasks.services import reap

    records = make_records(800)
    stages = _dedup_stages(2)
    pipeline = make_pipeline(file_root, records=records, stages=stages, batch_size=100)
    run = run_start(pipeline=pipeline, actor=None)
    dedup = StageRun.objects.get(run=run, key="dedup")
    # Run everything up to the reduce phase, then hold the first reduce batch.
    held = None
    while doorbell.sent:
        item = doorbell.sent.pop(0)
        b = Batch.objects.get(pk=item[0])
        if b.stage_run_id == dedup.pk and b.input_ref.get("phase") == "reduce" and held is None:
            held = item
            continue
        engine.batch_execute(batch_id=item[0], owner="test:1")
    assert held is not None
    stale = engine.batch_claim(batch_id=held[0], owner="old:1")
    spec = engine.run_spec(run.pk)
    stage = spec.stages[stale._position]
    with engine.LeaseKeeper(stale, run.pk, 60) as keeper:
        stale_out = engine._do_global(spec, stage, stale, keeper)
    # Named for an operator if it crashed for good (the reason lists a batch's input records).
    assert f"partition {stale.input_ref['partition']} of" in engine.batch_record_ids(spec, stage, stale)
    # The lease expires (SIGSTOP past the lease); the reaper re-queues, another worker redoes it.
    assert reap(now=timezone.now() + timedelta(seconds=3600))["expired"] == 1
    doorbell.drain()
    with pytest.raises(engine.LeaseLost):
        engine._batch_commit(spec, stage, stale, stale_out, 1)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    b = Batch.objects.get(pk=held[0])
    assert b.status == BatchStatus.SUCCEEDED and b.canonical_attempt == stale.attempt + 1 and b.crashes == 1
    assert b.checkpoint["drops"].endswith(f".{b.canonical_attempt}.drops")
    # Both attempts decided the same drops; the canonical one is the redo's.
    from tasks import workspace

    assert workspace.resolve(b.checkpoint["drops"]).read_bytes() == stale_out.output_path.read_bytes()
    assert published(run) == reference_output(records, stages)


@pytest.mark.django_db
def test_a_reduce_that_reads_other_than_the_stage_before_recorded_fails_naming_both(doorbell, file_root):
    stages = _dedup_stages(2)
    pipeline = make_pipeline(file_root, records=make_records(300), stages=stages, batch_size=100, max_batch_attempts=1)
    run = run_start(pipeline=pipeline, actor=None)
    dedup = StageRun.objects.get(run=run, key="dedup")
    while doorbell.sent:
        item = doorbell.sent.pop(0)
        if Batch.objects.filter(pk=item[0], stage_run=dedup, input_ref__phase="reduce").exists():
            clean = StageRun.objects.get(run=run, key="clean")
            StageRun.objects.filter(pk=clean.pk).update(records_out=clean.records_out + 1)
        engine.batch_execute(batch_id=item[0], owner="test:1")
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert "dedup" in run.status_reason and "clean" in run.status_reason and "recorded" in run.status_reason


@pytest.mark.django_db
def test_near_duplicate_dedup_still_runs_as_one_unit(doorbell, file_root):
    stages = [
        ("dedup", "dedup", {"fields": ["text"], "partitions": 4, "near_duplicate": {"enabled": True}}),
        ("publish", "publish", {}),
    ]
    records = make_records(300)
    pipeline = make_pipeline(file_root, records=records, stages=stages, batch_size=100)
    run = run_start(pipeline=pipeline, actor=None)
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    dedup = StageRun.objects.get(run=run, key="dedup")
    assert dedup.total_batches == 1 and "partitions" not in dedup.result
    assert published(run) == reference_output(records, stages)
