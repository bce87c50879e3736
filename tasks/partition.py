"""Partitioned global stages: a keyed global stage (exact dedup) run by every worker, in phases of ordinary batches.

A global kind that decides each record by its key alone (`GlobalStageKind.partitions()` > 0) does not run as
one unit on one worker. Its partition count N is fixed in the run's snapshot at start. Every phase is a set of
ordinary batches (claimed with a lease, fenced on the attempt, written to attempt-specific workspace files,
committed with their checkpoint; the reaper re-queues them after a crash):

0. **keys**, in the chunk units upstream: the unit that writes a chunk just before the stage also writes
   `(line, key)` entries for its records into one file per hash partition (`<index>.<attempt>.keys/`), before
   its fenced commit (`keys_emit`). Parts without keys (a global stage upstream) get **map** batches instead,
   one per group of parts, once the input is complete (`m<group>.<attempt>/`).
1. **reduce**, one batch per partition: reads that partition's entries of every part in input order and lets
   the kind name the positions to drop (`reduce_partition`: for dedup, every occurrence of a key after its
   first). Equal keys share a partition, so the first occurrence in input order still wins. Writes
   `r<partition>.<attempt>.drops`: the dropped positions, indexed by part (or map group).
2. **write**, one batch per group of consecutive parts: copies the group's input lines except the dropped ones
   (JSON lines are records: no decoding, no re-encoding), in order, as the stage's output; the next stage reads
   the write batches' outputs in index order, so the output is the one-unit output, byte for byte.

The phase moves on in the commit of the last batch of the one before (under the run row's lock, so it is
decided once): the stage's `result["partitions"]` records the plan and the phase, and its total batches grows
as phases open. Map and reduce batches count no records; the write batches count the stage's records
(in = out + filtered), so counters read as for the one unit. docs/engine.md "Partitioned global stages".
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import uuid
from array import array
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from django.utils import timezone

from . import workspace
from .choices import BatchStatus
from .models import Batch, StageRun, WorkerHeartbeat

if TYPE_CHECKING:  # the engine imports this module; these are for annotations only
    from .engine import LeaseKeeper, Outcome, RunSpec, StageSpec

__all__ = [
    "GROUPS_PER_PARTITION",
    "KeysWriter",
    "REDUCE_BUCKET_BYTES",
    "drops_read",
    "fault_point",
    "drops_write",
    "group_bounds",
    "keys_count",
    "keys_dir",
    "keys_emit",
    "keys_read",
    "keys_write",
    "live_workers",
    "partition_of",
    "phase_run",
    "planned_partitions",
    "reduce_partition_to",
    "stage_advance",
    "stage_open",
    "write_group_to",
]

MAP, REDUCE, WRITE = "map", "reduce", "write"
# Groups (map and write batches) per partition, at most one per upstream part: enough batches for every
# worker to take a share, few enough that claims and commits stay a small part of the work.
GROUPS_PER_PARTITION = 4
_ENTRY = struct.Struct("<IH")  # position in the group, key length; then the key bytes
_U32 = struct.Struct("<I")


# ---- pure helpers (unit-tested without a database) -------------------------------------------------
def partition_of(key: bytes, partitions: int) -> int:
    """The partition of a key: a stable hash (the same in every process), never Python's salted hash()."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") % partitions


def group_bounds(parts: int, groups: int) -> list[tuple[int, int]]:
    """[start, end) of each group over `parts` consecutive parts, as even as can be, none empty."""
    groups = max(1, min(groups, parts))
    return [(g * parts // groups, (g + 1) * parts // groups) for g in range(groups)]


class KeysWriter:
    """Writes a keys folder: one `<partition>.keys` file per partition, appended to as entries come, and a
    `count` file (records, partitions); in a temp folder moved into place whole by commit(). A map batch adds
    its group part by part, so it holds one part's keys, not the group's."""

    def __init__(self, folder: Path, partitions: int):
        self.folder = folder
        self.partitions = partitions
        self.records = 0
        self.tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp")
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.files = [open(self.tmp / f"{p}.keys", "wb") for p in range(partitions)]  # noqa: SIM115 - commit/abort

    def add(self, entries_by_partition: list[list[tuple[int, bytes]]]) -> None:
        for fh, entries in zip(self.files, entries_by_partition, strict=True):
            buf = bytearray()
            for position, key in entries:
                buf += _ENTRY.pack(position, len(key))
                buf += key
            fh.write(buf)
            self.records += len(entries)

    def _close(self) -> None:
        for fh in self.files:
            fh.close()

    def commit(self) -> None:
        try:
            self._close()
            (self.tmp / "count").write_text(f"{self.records} {self.partitions}")
            if self.folder.exists():
                shutil.rmtree(self.folder, ignore_errors=True)
            os.replace(self.tmp, self.folder)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        self._close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def keys_write(folder: Path, entries_by_partition: list[list[tuple[int, bytes]]]) -> None:
    """One `<partition>.keys` file per partition and a `count` file (records, partitions), written to a temp
    folder moved into place whole."""
    writer = KeysWriter(folder, len(entries_by_partition))
    try:
        writer.add(entries_by_partition)
    except BaseException:
        writer.abort()
        raise
    writer.commit()


def keys_count(folder: Path, partitions: int) -> int:
    """How many records a keys folder holds; refuses one written for another number of partitions."""
    records, written_for = (int(x) for x in (folder / "count").read_text().split())
    if written_for != partitions:
        raise ValueError(f"{folder.name} holds keys for {written_for} partitions, not {partitions}")
    return records


def keys_read(folder: Path, partition: int) -> Iterator[tuple[int, bytes]]:
    """The (position, key) entries of one partition of one group, in the order they were written."""
    data = (folder / f"{partition}.keys").read_bytes()
    view = memoryview(data)
    at, end, size = 0, len(data), _ENTRY.size
    unpack = _ENTRY.unpack_from
    while at < end:
        position, length = unpack(view, at)
        at += size
        yield position, data[at : at + length]
        at += length


def drops_write(path: Path, groups: int, dropped: dict[int, list[int]]) -> int:
    """The dropped positions of one partition, by group: header (groups, offsets), then positions; returns count."""
    offsets, body = [0], bytearray()
    for g in range(groups):
        positions = sorted(dropped.get(g, ()))
        body += struct.pack(f"<{len(positions)}I", *positions)
        offsets.append(offsets[-1] + len(positions))
    data = _U32.pack(groups) + struct.pack(f"<{groups + 1}Q", *offsets) + bytes(body)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return offsets[-1]


def drops_read(path: Path, group: int) -> list[int]:
    """The positions of one group that one partition drops."""
    with open(path, "rb") as fh:
        (groups,) = _U32.unpack(fh.read(_U32.size))
        if not 0 <= group < groups:
            raise ValueError(f"group {group} is not in {path.name} ({groups} groups)")
        fh.seek(_U32.size + 8 * group)
        start, end = struct.unpack("<2Q", fh.read(16))
        fh.seek(_U32.size + 8 * (groups + 1) + 4 * start)
        return list(struct.unpack(f"<{end - start}I", fh.read(4 * (end - start))))


# A reduce holds the keys of at most about this many bytes of key entries at once: a larger partition is
# first split into buckets by a second hash of the key (spill files next to the drops file), each reduced on its
# own. Equal keys share a bucket and each bucket keeps input order, so the kind decides exactly as in one pass;
# memory follows this, not the input size (dedup's set: about 4 MB per MB of entries, 38 bytes an entry, so
# about 27,000 keys and 4 MB a bucket; one pass over 1M records in 4 partitions held about 30 MB).
REDUCE_BUCKET_BYTES = 1024 * 1024
_SPILL = struct.Struct("<IIH")  # part (or map group), position, key length; then the key bytes
_SPILL_BUFFER = 16 * 1024  # write buffer per bucket file (at most REDUCE_MAX_BUCKETS of them)
REDUCE_MAX_BUCKETS = 256


def reduce_partition_to(
    path: Path, kind, ctx, folders: list[Path], partition: int, check=None, bucket_bytes=None
) -> int:
    """Reduce one partition of the key folders (in input order) with `kind.reduce_partition` and write the
    positions it drops to `path` (drops_write); returns how many. Memory is bounded by `bucket_bytes`
    (REDUCE_BUCKET_BYTES) of key entries plus 4 bytes per dropped position, whatever the input size."""
    budget = max(1, bucket_bytes or REDUCE_BUCKET_BYTES)
    size = sum((folder / f"{partition}.keys").stat().st_size for folder in folders)
    buckets = min(REDUCE_MAX_BUCKETS, -(-size // budget)) or 1
    dropped: dict[int, array] = {}

    def keep(drops) -> None:
        for u, position in drops:
            dropped.setdefault(int(u), array("I")).append(int(position))

    if buckets == 1:

        def entries():
            for u, folder in enumerate(folders):
                if check is not None:
                    check()
                for position, key in keys_read(folder, partition):
                    yield (u, position), key

        keep(kind.reduce_partition(entries(), ctx))
        return drops_write(path, len(folders), dropped)
    spill = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.spill")
    spill.mkdir(parents=True)
    try:
        files = [open(spill / str(b), "wb", buffering=_SPILL_BUFFER) for b in range(buckets)]  # noqa: SIM115
        try:
            # hash() is salted per process, and so stable inside this one: the buckets live only here.
            pack = _SPILL.pack
            for u, folder in enumerate(folders):
                if check is not None:
                    check()
                for position, key in keys_read(folder, partition):
                    files[hash(key) % buckets].write(pack(u, position, len(key)) + key)
        finally:
            for fh in files:
                fh.close()
        for b in range(buckets):
            if check is not None:
                check()
            data = (spill / str(b)).read_bytes()
            keep(kind.reduce_partition(_spill_read(data), ctx))
            del data
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    return drops_write(path, len(folders), dropped)


def _spill_read(data: bytes) -> Iterator[tuple[tuple[int, int], bytes]]:
    at, end, size, unpack = 0, len(data), _SPILL.size, _SPILL.unpack_from
    while at < end:
        u, position, length = unpack(data, at)
        at += size
        yield (u, position), data[at : at + length]
        at += length


def filter_lines(data: bytes, first: int, drop: set[int]) -> tuple[bytes, int, int]:
    """The JSON lines of `data` whose positions (numbered from `first`) are not in `drop`: (kept bytes, lines, kept)."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if not drop:
        return data, len(lines), len(lines)
    kept = [line for i, line in enumerate(lines, start=first) if i not in drop]
    out = b"\n".join(kept) + b"\n" if kept else b""
    return out, len(lines), len(kept)


def write_group_to(path: Path, units: list[dict], drop_files: list[Path], stage_key: str = "", check=None):
    """Copy the JSON lines of a write group's units (each: `index`, `parts`, `keys`) to `path`, except the
    positions the drop files name; returns (records read, records kept). Streamed block by block
    (`Parts.raw`), so memory is bounded by a block and one unit's drops, not by the group: a group is a
    fixed fraction of the whole input (G is set by the partition count), so holding it would grow a worker
    with the input size."""
    seen = kept = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as fh:
            for unit in units:
                drop: set[int] = set()
                for drops_path in drop_files:
                    drop.update(drops_read(drops_path, int(unit["index"])))
                expected = keys_count(workspace.resolve(unit["keys"]), len(drop_files))
                lines_in_unit = 0
                for data, _n in workspace.Parts(unit["parts"], check=check).raw():
                    chunk, lines, k = filter_lines(data, lines_in_unit, drop)
                    fh.write(chunk)
                    lines_in_unit += lines
                    kept += k
                if lines_in_unit != expected:
                    raise ValueError(
                        f"stage {stage_key}: {unit['parts'][0]} and the parts after it hold {lines_in_unit} records "
                        f"now but {expected} when their keys were taken"
                    )
                seen += lines_in_unit
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return seen, kept


# ---- planning (at run start) and emitting keys (in the upstream chunk units) --------------------------
def live_workers(now=None) -> int:
    """Workers whose heartbeat is fresh (seen within three heartbeat intervals)."""
    from .engine import engine_setting

    now = now or timezone.now()
    interval = float(engine_setting("worker_heartbeat_seconds"))
    return WorkerHeartbeat.objects.filter(last_seen_at__gte=now - timedelta(seconds=3 * interval)).count()


def _kind(name: str):
    from pipelines.stagekinds import registry

    return registry.get(name)


def planned_partitions(kind_name: str, config: dict) -> int:
    """The partitions a global stage of this kind runs in (0: one unit), fixed in the run's snapshot at start."""
    partitions = getattr(_kind(kind_name), "partitions", None)
    if partitions is None:
        return 0
    return max(0, int(partitions(config or {}, live_workers()) or 0))


def keys_dir(part_ref: str) -> str | None:
    """Where the upstream unit that wrote a workspace part left its records' keys (`<index>.<attempt>.keys`)."""
    return part_ref[: -len(".jsonl")] + ".keys" if part_ref.endswith(".jsonl") else None


def keys_emit(spec: RunSpec, stage: StageSpec, batch: Batch, records: list[dict], output: Path) -> None:
    """The upstream unit writing `output` (its chunk) also writes its records' keys for the partitioned `stage`
    next to it, before its fenced commit: so the stage starts at its reduce phase, the keys were taken while
    the chunks ran in parallel, and nothing reads the chunks twice."""
    from .engine import _context

    n = stage.partitions
    keys = _kind(stage.kind).record_keys(records, _context(spec, stage, batch, None))
    if len(keys) != len(records):
        raise ValueError(f"{stage.kind}.record_keys returned {len(keys)} keys for {len(records)} records")
    entries: list[list[tuple[int, bytes]]] = [[] for _ in range(n)]
    for position, key in enumerate(keys):
        entries[partition_of(key, n)].append((position, key))
    keys_write(output.with_suffix(".keys"), entries)


# ---- opening and advancing a partitioned stage (inside the engine's commit, run row locked) ----------
def stage_open(spec: RunSpec, stage: StageSpec, run_active: bool, cancelling: bool, now) -> list | None:
    """The input of a partitioned global stage is complete: create its first batches; None to run one unit.

    When every upstream part has its keys (emitted by the unit that wrote it), the stage starts with its
    reduce batches; otherwise (a global stage upstream, a run planned before) with map batches over groups.
    """
    from .engine import _new_batch, stage_output_refs

    n = int(stage.partitions or 0)
    if n < 1:
        return None
    refs = stage_output_refs(spec.stages[stage.position - 1].stage_run_id)
    if not refs:
        return None  # nothing to partition: the one unit handles an empty input
    bounds = group_bounds(len(refs), GROUPS_PER_PARTITION * n)
    emitted = all((k := keys_dir(ref)) and workspace.resolve(k).is_dir() for ref in refs)
    if emitted:
        plan = {"partitions": n, "groups": len(bounds), "maps": 0, "phase": REDUCE}
        inputs = [{"phase": REDUCE, "partition": p, "partitions": n, "keys": None} for p in range(n)]
    else:
        plan = {"partitions": n, "groups": len(bounds), "maps": len(bounds), "phase": MAP}
        inputs = [{"phase": MAP, "group": g, "partitions": n, "parts": refs[a:b]} for g, (a, b) in enumerate(bounds)]
    new = [_new_batch(stage.stage_run_id, i, ref, run_active, cancelling, now) for i, ref in enumerate(inputs)]
    Batch.objects.bulk_create(new)
    StageRun.objects.filter(pk=stage.stage_run_id).update(total_batches=len(new), result={"partitions": plan})
    return [(str(b.pk), stage.queue, True) for b in new if b.status == BatchStatus.QUEUED]


def stage_advance(spec: RunSpec, stage: StageSpec, run_active: bool, cancelling: bool, now) -> list | None:
    """Every batch of the current phase is done: open the next phase; None when the stage is complete."""
    from .engine import _new_batch, stage_output_refs

    result = StageRun.objects.values_list("result", flat=True).get(pk=stage.stage_run_id) or {}
    plan = result.get("partitions")
    if not plan or plan.get("phase") == WRITE:
        return None
    n, groups, maps = int(plan["partitions"]), int(plan["groups"]), int(plan["maps"])
    done = {
        i: (ref, cp)
        for i, ref, cp in Batch.objects.filter(
            stage_run_id=stage.stage_run_id, status=BatchStatus.SUCCEEDED
        ).values_list("index", "input_ref", "checkpoint")
    }
    if plan["phase"] == MAP:
        keys = [done[g][1]["keys"] for g in range(maps)]
        inputs = [{"phase": REDUCE, "partition": p, "partitions": n, "keys": keys} for p in range(n)]
        plan = {**plan, "phase": REDUCE}
    else:
        drops = [done[maps + p][1]["drops"] for p in range(n)]
        if maps:
            units = [[{"index": g, "parts": done[g][0]["parts"], "keys": done[g][1]["keys"]}] for g in range(maps)]
        else:
            refs = stage_output_refs(spec.stages[stage.position - 1].stage_run_id)
            units = [
                [{"index": k, "parts": [refs[k]], "keys": keys_dir(refs[k])} for k in range(a, b)]
                for a, b in group_bounds(len(refs), groups)
            ]
        inputs = [{"phase": WRITE, "group": g, "units": u, "drops": drops} for g, u in enumerate(units)]
        plan = {**plan, "phase": WRITE}
    first = maps + (n if plan["phase"] == WRITE else 0)
    new = [_new_batch(stage.stage_run_id, first + i, ref, run_active, cancelling, now) for i, ref in enumerate(inputs)]
    Batch.objects.bulk_create(new)
    StageRun.objects.filter(pk=stage.stage_run_id).update(
        total_batches=first + len(new), result={**result, "partitions": plan}
    )
    return [(str(b.pk), stage.queue, True) for b in new if b.status == BatchStatus.QUEUED]


# ---- running one batch of a phase (in a worker, under its lease) --------------------------------------
def fault_point(name: str) -> None:
    """A named point of a phase batch; real-process tests stop or kill a worker here (tasks/tests/worker_main.py).

    Points: `<phase>.written` (map, reduce or write): the attempt's file is in place, the batch not committed.
    """


def phase_run(spec: RunSpec, stage: StageSpec, batch: Batch, keeper: LeaseKeeper) -> Outcome:
    """Run one map, reduce or write batch of a partitioned stage; its outcome commits like any batch's."""
    ref = batch.input_ref or {}
    phase = ref.get("phase")
    if phase == MAP:
        outcome = _map(spec, stage, batch, keeper, ref)
    elif phase == REDUCE:
        outcome = _reduce(spec, stage, batch, keeper, ref)
    elif phase == WRITE:
        outcome = _write(spec, stage, batch, keeper, ref)
    else:
        raise ValueError(f"unknown partition phase {phase!r}")
    fault_point(f"{phase}.written")
    return outcome


def _context(spec: RunSpec, stage: StageSpec, batch: Batch, keeper: LeaseKeeper):
    from .engine import _context

    return _context(spec, stage, batch, keeper)


def _stage_dir(spec: RunSpec, stage: StageSpec) -> Path:
    return workspace.run_dir(spec.run_id) / str(stage.position)


def _map(spec: RunSpec, stage: StageSpec, batch: Batch, keeper: LeaseKeeper, ref: dict) -> Outcome:
    from .engine import Outcome

    kind = _kind(stage.kind)
    ctx = _context(spec, stage, batch, keeper)
    n = int(ref["partitions"])
    folder = _stage_dir(spec, stage) / f"m{ref['group']}.{batch.attempt}"
    writer = KeysWriter(folder, n)
    position = 0
    try:
        for part in ref["parts"]:  # one part's records and keys at a time: a group is a fraction of the input
            keeper.check()
            records = workspace.read_jsonl(workspace.resolve(part))
            keys = kind.record_keys(records, ctx)
            if len(keys) != len(records):
                raise ValueError(f"{stage.kind}.record_keys returned {len(keys)} keys for {len(records)} records")
            entries: list[list[tuple[int, bytes]]] = [[] for _ in range(n)]
            for key in keys:
                entries[partition_of(key, n)].append((position, key))
                position += 1
            writer.add(entries)
    except BaseException:
        writer.abort()
        raise
    writer.commit()
    return Outcome(
        output_path=folder, checkpoint={"keys": workspace.relative(folder), "records": position}, downstream=[]
    )


def _reduce(spec: RunSpec, stage: StageSpec, batch: Batch, keeper: LeaseKeeper, ref: dict) -> Outcome:
    from .engine import Outcome, _reconcile, _recorded_output, stage_output_refs

    upstream = spec.stages[stage.position - 1]
    p, n = int(ref["partition"]), int(ref["partitions"])
    key_dirs = ref["keys"]
    if key_dirs is None:  # the upstream units emitted them, one folder per part
        key_dirs = [keys_dir(part) for part in stage_output_refs(upstream.stage_run_id)]
    folders = [workspace.resolve(k) for k in key_dirs]
    _reconcile(stage, upstream, sum(keys_count(f, n) for f in folders), _recorded_output(upstream))
    path = _stage_dir(spec, stage) / f"r{p}.{batch.attempt}.drops"
    ctx = _context(spec, stage, batch, keeper)
    count = reduce_partition_to(path, _kind(stage.kind), ctx, folders, p, check=keeper.check)
    return Outcome(output_path=path, checkpoint={"drops": workspace.relative(path), "dropped": count}, downstream=[])


def _write(spec: RunSpec, stage: StageSpec, batch: Batch, keeper: LeaseKeeper, ref: dict) -> Outcome:
    from .engine import Outcome

    path = workspace.batch_path(spec.run_id, stage.position, batch.index, batch.attempt)
    drop_files = [workspace.resolve(p) for p in ref["drops"]]
    seen, kept = write_group_to(path, ref["units"], drop_files, stage_key=stage.key, check=keeper.check)
    rel = workspace.relative(path)
    return Outcome(
        records_in=seen,
        records_out=kept,
        filtered=seen - kept,
        output_ref=rel,
        output_path=path,
        downstream=[(int(ref["group"]), {"path": rel, "records": kept})],
    )
