"""The batch engine: claim a batch with a lease, process it, commit fenced on the attempt, advance the run.

The database is the truth and Celery is the doorbell (docs/engine.md): a message carries a batch id;
`batch_execute` claims the row with a conditional UPDATE that bumps its attempt and takes a lease,
and every later write is fenced on (id, attempt, lease owner). A worker that lost its lease writes
nothing. Outputs go to attempt-specific workspace files; the success transaction records the
canonical attempt, the counters, the quarantined records, the metrics event and the downstream
batches at once, and messages are sent only after it commits.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone
from django.utils.translation import gettext as _

from . import partition, workspace
from .choices import BatchStatus, RunEventKind, RunStatus, StageRunStatus
from .events import run_event_record
from .models import Batch, QuarantinedRecord, StageRun, TaskRun
from .reasons import HUMAN_WAITS, reason_render

logger = logging.getLogger(__name__)

__all__ = [
    "StageWaiting",
    "LeaseLost",
    "ReconcileError",
    "batch_execute",
    "dispatch",
    "run_advance",
    "run_output_chunks",
    "stage_output_refs",
]

TASK_NAME = "tasks.batch_execute"
QUEUE_STAGES = "stages"
QUEUE_INFERENCE = "inference"
# Global units (dedup over the whole input, publish) may run long; per-record batches use the defaults.
GLOBAL_SOFT_TIME_LIMIT = 6 * 3600
GLOBAL_TIME_LIMIT = GLOBAL_SOFT_TIME_LIMIT + 120
ACTIVE_RUN = (RunStatus.PENDING, RunStatus.RUNNING, RunStatus.WAITING)
MARKER_KINDS = ("read", "publish")


class StageWaiting(Exception):  # noqa: N818 - a state, not an error
    """A stage cannot proceed now (model breaker open); the batch waits `retry_after` seconds."""

    def __init__(self, message: str = "", retry_after: float = 30.0):
        super().__init__(message or "waiting")
        self.retry_after = retry_after


class LeaseLost(Exception):  # noqa: N818
    """This worker no longer holds the batch's lease; its output is discarded."""


class Aborted(Exception):  # noqa: N818
    """The run is being cancelled; the in-flight batch stops."""


class ReconcileError(ValueError):
    """What a stage read is not what the stage before it recorded as output (the batch fails, naming both)."""


def _recorded_output(stage: StageSpec) -> int:
    """The records a (complete) stage recorded as output, from its committed counters."""
    return StageRun.objects.values_list("records_out", flat=True).get(pk=stage.stage_run_id)


def _reconcile(stage: StageSpec, upstream: StageSpec, read: int, expected: int, index: int | None = None) -> None:
    if read == expected:
        return
    params = {"stage": stage.key, "read": read, "prev": upstream.key, "expected": expected, "index": index}
    if index is None:
        msg = _("Stage %(stage)s read %(read)s records but stage %(prev)s recorded %(expected)s as its output.")
    else:
        msg = _(
            "Stage %(stage)s read %(read)s records for batch %(index)s "
            "but stage %(prev)s recorded %(expected)s as that batch's output."
        )
    raise ReconcileError(msg % params)


# ---- settings -------------------------------------------------------------------------------
_setting_memo: dict[str, tuple[float, Any]] = {}
_DEFAULTS = {
    "engine_lease_seconds": 60.0,
    "engine_crash_budget": 3,
    "engine_resend_after_seconds": 120.0,
    "worker_heartbeat_seconds": 10.0,
}


def engine_setting(key: str) -> Any:
    """An engine setting from the system config, memoised for 5 s per process (read on every batch)."""
    now = time.monotonic()
    hit = _setting_memo.get(key)
    if hit and now - hit[0] < 5.0:
        return hit[1]
    try:
        from dataflare_portal.core.config import config_get

        value = config_get(key)
    except Exception:
        value = _DEFAULTS[key]
    _setting_memo[key] = (now, value)
    return value


def engine_settings_forget() -> None:
    _setting_memo.clear()


# ---- run specification (the snapshot, cached per process: it never changes) -------------------
@dataclass
class StageSpec:
    position: int
    key: str
    kind: str
    group: str
    config: dict
    queue: str
    model_config_id: int | None = None
    stage_run_id: Any = None
    # A global stage that runs in this many hash partitions (tasks/partition.py); 0: one unit.
    partitions: int = 0

    @property
    def is_global(self) -> bool:
        return self.group == "global"


@dataclass
class RunSpec:
    run_id: Any
    project_id: int
    pipeline_id: int
    batch_size: int
    max_attempts: int
    input_dataset_id: int | None
    output_dataset_id: int | None
    stages: list[StageSpec] = field(default_factory=list)
    cache: dict = field(default_factory=dict)
    # A run started by a dataset trigger reads that published version, not the dataset's own location.
    input_version_id: int | None = None
    # A record range of the input (a backfill's slice): (records to skip, index to stop before or None).
    input_range: tuple[int, int | None] | None = None

    @property
    def last_data_position(self) -> int:
        """The stage whose output is the run's output (the one before publish, if any)."""
        pos = len(self.stages) - 1
        while pos > 0 and self.stages[pos].kind == "publish":
            pos -= 1
        return pos


_specs: OrderedDict[str, RunSpec] = OrderedDict()
_specs_lock = threading.Lock()


def _input_range(value: dict | None) -> tuple[int, int | None] | None:
    """The snapshot's 1-based inclusive {"first", "last"} as (records to skip, 0-based index to stop before)."""
    if not value:
        return None
    first = int(value.get("first") or 1)
    last = value.get("last")
    return first - 1, (int(last) if last is not None else None)


def run_spec(run_id) -> RunSpec:
    key = str(run_id)
    with _specs_lock:
        spec = _specs.get(key)
        if spec is not None:
            _specs.move_to_end(key)
            return spec
    run = TaskRun.objects.values("pipeline_snapshot", "project_id", "pipeline_id").get(pk=run_id)
    snap = run["pipeline_snapshot"]
    ids = dict(StageRun.objects.filter(run_id=run_id).values_list("position", "id"))
    p = snap["pipeline"]
    spec = RunSpec(
        run_id=run_id,
        project_id=run["project_id"],
        pipeline_id=run["pipeline_id"],
        batch_size=int(p["batch_size"]),
        max_attempts=int(p["max_batch_attempts"]),
        input_dataset_id=p.get("input_dataset_id"),
        output_dataset_id=p.get("output_dataset_id"),
        input_version_id=p.get("input_version_id"),
        input_range=_input_range(p.get("input_range")),
        stages=[
            StageSpec(
                position=s["position"],
                key=s["key"],
                kind=s["kind"],
                group=s["group"],
                config=s.get("config") or {},
                queue=s.get("queue") or QUEUE_STAGES,
                model_config_id=s.get("model_config_id"),
                stage_run_id=ids.get(s["position"]),
                partitions=int(s.get("partitions") or 0),
            )
            for s in snap["stages"]
        ],
    )
    with _specs_lock:
        _specs[key] = spec
        while len(_specs) > 64:
            _specs.popitem(last=False)
    return spec


# ---- dispatch -------------------------------------------------------------------------------
def dispatch(items: list[tuple[str, str, bool]]) -> None:
    """Ring the doorbell for (batch id, queue, is_global) items; call only after the rows are committed.

    A broker failure is logged, not raised: the rows stay QUEUED and the reaper re-sends them.
    """
    if not items:
        return
    from dataflare_portal.celery import app

    try:
        with app.producer_or_acquire() as producer:
            for batch_id, queue, is_global in items:
                options = (
                    {"soft_time_limit": GLOBAL_SOFT_TIME_LIMIT, "time_limit": GLOBAL_TIME_LIMIT} if is_global else {}
                )
                app.send_task(
                    TASK_NAME, args=[str(batch_id)], task_id=str(batch_id), queue=queue, producer=producer, **options
                )
    except Exception:
        logger.exception("could not send %d batch message(s); the reaper will re-send them", len(items))


def dispatch_on_commit(items: list[tuple[str, str, bool]]) -> None:
    if items:
        transaction.on_commit(lambda: dispatch(items))


# ---- claim and lease ------------------------------------------------------------------------
_stage_places: dict = {}


def _stage_place(stage_run_id) -> tuple[Any, int]:
    """(run id, position) of a stage run; immutable, so cached per process."""
    hit = _stage_places.get(stage_run_id)
    if hit is None:
        if len(_stage_places) > 10_000:
            _stage_places.clear()
        hit = _stage_places[stage_run_id] = tuple(
            StageRun.objects.values_list("run_id", "position").get(pk=stage_run_id)
        )
    return hit


def _sql_value(field_name: str, value, model=Batch):
    from django.db import connection

    return model._meta.get_field(field_name).get_db_prep_value(value, connection, prepared=False)


def _as_uuid(value) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def batch_claim(*, batch_id, owner: str, lease_seconds: float | None = None) -> Batch | None:
    """Claim a batch with one conditional UPDATE ... RETURNING that bumps the attempt and takes a lease.

    None if the batch is not claimable (done, running elsewhere, waiting) or its run is not active. The
    batch's own status is a plain condition on the updated row, so PostgreSQL re-checks it when two
    claims race and only one wins (a Django join filter would compare against a snapshot subquery).
    """
    from django.db import connection

    now = timezone.now()
    lease = lease_seconds or float(engine_setting("engine_lease_seconds"))
    bt, st, rt = Batch._meta.db_table, StageRun._meta.db_table, TaskRun._meta.db_table
    claimable = list(BatchStatus.claimable())
    active = list(ACTIVE_RUN)
    sql = (
        f"UPDATE {bt} SET status = %s, lease_owner = %s, lease_expires_at = %s, attempt = attempt + 1, "  # noqa: S608
        f"started_at = %s, not_before = NULL "
        f"WHERE id = %s AND status IN ({', '.join(['%s'] * len(claimable))}) "
        f"AND (not_before IS NULL OR not_before <= %s) "
        f"AND EXISTS (SELECT 1 FROM {st} s INNER JOIN {rt} r ON r.id = s.run_id "
        f"WHERE s.id = {bt}.stage_run_id AND r.status IN ({', '.join(['%s'] * len(active))})) "
        f'RETURNING attempt, stage_run_id, "index", input_ref'
    )
    expires = now + timedelta(seconds=lease)
    params = [
        BatchStatus.RUNNING,
        owner,
        _sql_value("lease_expires_at", expires),
        _sql_value("started_at", now),
        _sql_value("id", _as_uuid(batch_id)),
        *claimable,
        _sql_value("not_before", now),
        *active,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    attempt, stage_run_id, index, input_ref = row
    if not isinstance(stage_run_id, uuid.UUID):
        stage_run_id = uuid.UUID(str(stage_run_id))
    if isinstance(input_ref, (str, bytes)):
        input_ref = json.loads(input_ref)
    batch = Batch(
        id=_as_uuid(batch_id),
        stage_run_id=stage_run_id,
        index=index,
        attempt=attempt,
        status=BatchStatus.RUNNING,
        lease_owner=owner,
        lease_expires_at=expires,
        input_ref=input_ref or {},
    )
    batch._run_id, batch._position = _stage_place(stage_run_id)
    batch._lease_seconds = lease
    return batch


def _returning(sql: str, params: list) -> tuple:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


def lock_run(run_id) -> str:
    """Lock the run row (PostgreSQL) and return its status.

    Lock order in every engine transaction: batch row(s), then the run row, then stage runs. The
    run row serialises the commits of one run's batches, so stage completion is decided once.
    """
    return TaskRun.objects.select_for_update().values_list("status", flat=True).get(pk=run_id)


def _fenced(batch: Batch):
    return Batch.objects.filter(
        pk=batch.pk, attempt=batch.attempt, lease_owner=batch.lease_owner, status=BatchStatus.RUNNING
    )


class _Renewer:
    """One daemon thread per process renews the leases of the batches in flight.

    Starting a thread per batch cost tens of milliseconds on a busy machine; this one starts once
    (lazily, so each prefork child gets its own after the fork) and keepers only register.
    """

    def __init__(self):
        self.keepers: dict[int, LeaseKeeper] = {}
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        self.pid: int | None = None

    def add(self, keeper: LeaseKeeper) -> None:
        with self.lock:
            self.keepers[id(keeper)] = keeper
            if self.thread is None or self.pid != os.getpid() or not self.thread.is_alive():
                self.pid = os.getpid()
                self.thread = threading.Thread(target=self._loop, name="df-lease-renewer", daemon=True)
                self.thread.start()

    def remove(self, keeper: LeaseKeeper) -> None:
        with self.lock:
            self.keepers.pop(id(keeper), None)

    def _loop(self) -> None:
        from django.db import connection

        while True:
            self.wake.wait(0.2)
            now = time.monotonic()
            with self.lock:
                due = [k for k in self.keepers.values() if k.next_renewal <= now]
            for keeper in due:
                try:
                    keeper.renew()
                except Exception:
                    logger.exception("lease renewal failed for batch %s", keeper.batch.pk)
                finally:
                    connection.close()


_renewer = _Renewer()


class LeaseKeeper:
    """Keeps a batch's lease alive while it is processed and notices a lost lease or a cancel."""

    def __init__(self, batch: Batch, run_id, lease_seconds: float):
        self.batch = batch
        self.run_id = run_id
        self.lease_seconds = lease_seconds
        self.interval = max(0.2, lease_seconds / 3.0)
        self.next_renewal = time.monotonic() + self.interval
        self.lost = False
        self.cancelled = False

    def __enter__(self):
        _renewer.add(self)
        return self

    def __exit__(self, *exc):
        _renewer.remove(self)
        return False

    def renew(self) -> None:
        self.next_renewal = time.monotonic() + self.interval
        n = _fenced(self.batch).update(lease_expires_at=timezone.now() + timedelta(seconds=self.lease_seconds))
        if n == 0:
            self.lost = True
            _renewer.remove(self)
            return
        if TaskRun.objects.filter(pk=self.run_id, status=RunStatus.CANCELLING).exists():
            self.cancelled = True

    def check(self) -> None:
        """Raise if the batch must stop (call between chunks of a long unit)."""
        if self.lost:
            raise LeaseLost()
        if self.cancelled:
            raise Aborted()


# ---- outcome of a batch ---------------------------------------------------------------------
@dataclass
class Outcome:
    records_in: int = 0
    records_out: int = 0
    filtered: int = 0
    quarantined: list = field(default_factory=list)  # (record_index, code, reason, record)
    usage: list = field(default_factory=list)
    output_ref: str = ""
    output_path: Any = None
    checkpoint: Any = None
    # Inputs of downstream batches: list of (index, workspace ref or an input_ref dict).
    downstream: list = field(default_factory=list)
    # Read stage: the next read batch's start, or end_of_input.
    next_start: Any = None
    end_of_input: bool = False
    result: dict | None = None
    # Output records kept in memory so a chained next stage does not read them back from disk.
    records: list | None = None
    # Time spent in this stage when it ran fused into another stage's batch.
    duration_ms: int = 0


def _kind(name: str):
    from pipelines.stagekinds import registry

    return registry.get(name)


def _context(spec: RunSpec, stage: StageSpec, batch: Batch, keeper: LeaseKeeper):
    from pipelines.stagekinds import StageContext

    model_config = None
    if stage.model_config_id:
        key = ("model_config", stage.model_config_id)
        model_config = spec.cache.get(key)
        if model_config is None:
            from pipelines.models import ModelConfig

            model_config = spec.cache[key] = ModelConfig.objects.filter(pk=stage.model_config_id).first()
    return StageContext(
        config=stage.config,
        run_id=spec.run_id,
        stage_key=stage.key,
        batch_index=batch.index,
        attempt=batch.attempt,
        model_config=model_config,
        workspace=workspace.run_dir(spec.run_id),
        scratch=workspace.scratch_dir(spec.run_id, stage.position, batch.pk),
        extra={
            "lease": keeper,
            "project_id": spec.project_id,
            "pipeline_id": spec.pipeline_id,
            "stage_template": stage.kind,
        },
    )


def _reader(spec: RunSpec):
    hit = spec.cache.get("reader")
    if hit is None:
        from catalog.connectors import get_connector
        from catalog.models import Dataset

        dataset = Dataset.objects.select_related("source").get(pk=spec.input_dataset_id)
        source = dataset.source
        if spec.input_version_id:
            from catalog.models import DatasetVersion, DataSource

            version = DatasetVersion.objects.get(pk=spec.input_version_id)
            # The version's file, read through the source it was published to (its lineage names it).
            dataset.location = version.location
            published_to = (version.lineage or {}).get("source") or {}
            if published_to.get("id") and published_to["id"] != dataset.source_id:
                source = DataSource.objects.get(pk=published_to["id"])
        conn = get_connector(source)
        bind = getattr(conn, "bind_workspace", None)
        if bind is not None:
            # A source fetched over the network (http) downloads into the run's folder: one snapshot per run.
            bind(workspace.run_dir(spec.run_id))
        hit = spec.cache["reader"] = (dataset, conn)
    return hit


# ---- a record range of the input -------------------------------------------------------------
# A run over a slice (a backfill's first..last record) reads through the same connector calls as any run:
# the first read starts at the checkpoint where record `first` begins, and no read goes past record `last`
# (a chunk asks for at most the records left), so chained, planned and re-read chunks stay exact.
# Finding the start reads (and drops) the records before it this many at a time, unless the connector
# can seek (files: a JSONL line scan).
SEEK_CHUNK = 10_000


def _seek(spec: RunSpec, index: int) -> dict | None:
    """The checkpoint where record `index` (0-based) begins; {"past_end": True, ...} when the input is shorter."""
    if index <= 0:
        return None
    dataset, conn = _reader(spec)
    seek = getattr(conn, "seek_record", None)
    found = seek(dataset, index) if seek is not None else None
    if found is not None:
        return found
    checkpoint, done = None, 0
    while done < index:
        chunks = conn.read(dataset, batch_size=min(SEEK_CHUNK, index - done), start=checkpoint)
        try:
            first = next(chunks, None)
        finally:
            close = getattr(chunks, "close", None)
            if close:
                close()
        if first is None or not first[0]:
            return {"record": done, "past_end": True}
        checkpoint = first[1]
        done += len(first[0])
    return checkpoint


def _range_start(spec: RunSpec) -> dict | None:
    """Where the run's slice begins (None: at the start of the input); found once per process and run."""
    if not spec.input_range or not spec.input_range[0]:
        return None
    if "range_start" not in spec.cache:
        spec.cache["range_start"] = _seek(spec, spec.input_range[0])
    return spec.cache["range_start"]


def _read_chunk(spec: RunSpec, stage: StageSpec, batch: Batch, keeper: LeaseKeeper, start) -> tuple | None:
    """One chunk of the input from `start`: (records after the read stage's field mapping, records read, checkpoint)."""
    dataset, conn = _reader(spec)
    # A planned chunk has the size the plan chose (docs/engine.md "Batches sized by work"); else the ceiling.
    batch_size = int(((batch.input_ref or {}).get("size") if batch is not None else None) or _ceiling(spec, stage))
    if spec.input_range is not None:
        if start is None:
            start = _range_start(spec)
        if start and start.get("past_end"):
            return None
        stop = spec.input_range[1]
        at = int((start or {}).get("record", 0))
        if stop is not None:
            if at >= stop:
                return None
            batch_size = min(batch_size, stop - at)
    chunks = conn.read(dataset, batch_size=batch_size, start=start)
    try:
        first = next(chunks, None)
    finally:
        close = getattr(chunks, "close", None)
        if close:
            close()
    if first is None:
        return None
    records, checkpoint = first
    n_read = len(records)
    if stage.config.get("fields"):
        records = _kind("read").process(records, _context(spec, stage, batch, keeper)).records
    return records, n_read, checkpoint


def _do_read(spec: RunSpec, stage: StageSpec, batch: Batch, keeper: LeaseKeeper, write: bool = True) -> Outcome:
    start = (batch.input_ref or {}).get("start")
    chunk = _read_chunk(spec, stage, batch, keeper, start)
    if chunk is None:
        return Outcome(end_of_input=True, checkpoint=start)
    records, n_read, checkpoint = chunk
    outcome = Outcome(
        records_in=n_read, records_out=len(records), checkpoint=checkpoint, next_start=checkpoint, records=records
    )
    if write:
        _write_output(spec, stage, batch, outcome)
    else:
        # Not written: this worker hands the records to the next stage in memory, and whoever redoes that
        # batch after a crash reads the same chunk from the source again (the read is deterministic).
        outcome.downstream = [(batch.index, {"reread": {"start": start}, "records": len(records)})]
    return outcome


def _planned(batch: Batch) -> bool:
    return bool((batch.input_ref or {}).get("planned"))


def _ceiling(spec: RunSpec, stage: StageSpec) -> int:
    """The most records a batch of this read stage may hold: the stage's or the pipeline's batch size."""
    return max(1, int(stage.config.get("batch_size") or spec.batch_size))


def _may_plan(spec: RunSpec, stage: StageSpec, batch: Batch) -> bool:
    """Whether this read batch is the first of a source that can be split ahead (so it will plan)."""
    if stage.kind != "read" or not PLANNED_READS_ENABLED or batch.index != 0 or _planned(batch):
        return False
    if (batch.input_ref or {}).get("start"):
        return False
    dataset, conn = _reader(spec)
    can = getattr(conn, "can_plan_reads", None)
    return bool(can and can(dataset))


# ---- batches sized by work -------------------------------------------------------------------
# A unit aims at this much work (read + fused stages) per batch: enough that the claim and commit
# (a few ms) are a small share, little enough that a crash loses little and the lease renewer, cancel
# and progress stay responsive.
UNIT_TARGET_SECONDS = 0.25
# Bound on a unit's input bytes (decoded records take several times more memory than their JSON text).
UNIT_MAX_BYTES = 32 * 1024 * 1024
# At least this many units per run when the input allows it, so every worker gets its share.
UNIT_MIN_COUNT = 16
# Batch 0 of a planned read measures the unit's cost on this many records before the rest is planned.
PROBE_RECORDS = 500


def unit_size(
    *,
    ceiling: int,
    probe_records: int,
    probe_seconds: float,
    probe_bytes: int,
    remaining_bytes: int | None = None,
    target_seconds: float = UNIT_TARGET_SECONDS,
    max_bytes: int = UNIT_MAX_BYTES,
    min_units: int = UNIT_MIN_COUNT,
) -> int:
    """Records per planned chunk, from what the probe chunk cost: `target_seconds` of work, at most
    `max_bytes` of input, at least `min_units` chunks over the remaining input, never above `ceiling`
    (the pipeline's batch size) nor below 1. Deterministic in its inputs (tests/test_engine_budget.py).
    """
    ceiling = max(1, int(ceiling))
    if probe_records <= 0:
        return ceiling
    size = ceiling
    if probe_seconds > 0:
        size = min(size, int(target_seconds * probe_records / probe_seconds + 1e-9))
    bytes_per_record = max(1.0, probe_bytes / probe_records)
    size = min(size, int(max_bytes / bytes_per_record))
    if remaining_bytes is not None and min_units > 0:
        # Not so large that the remaining input makes fewer than min_units chunks (but never below the
        # probe's own size for that reason alone: tiny inputs stay in few chunks).
        spread = int(remaining_bytes / bytes_per_record / min_units)
        size = min(size, max(spread, min(probe_records, ceiling)))
    return max(1, size)


def _plan_reads(spec: RunSpec, stage: StageSpec, batch: Batch, after: dict | None, size: int) -> bool:
    """Batch 0 of a splittable source creates every other read batch at once (docs/engine.md "Planned reads").

    Batch 0 has read (and processed) its own chunk first, which ends at `after`; the rest is planned in
    chunks of `size` records. The plan commits in its own fenced transaction before batch 0 commits its
    output, so other workers start on the other chunks at once. Batch 0 is marked planned, with its own
    chunk's size, in the same transaction: a retry of it reads the same chunk and never plans twice.
    Returns whether the batch is (now) planned.
    """
    dataset, conn = _reader(spec)
    stop = spec.input_range[1] if spec.input_range else None
    if after is None and _range_start(spec) is not None:
        # Batch 0 reads the slice's first `size` records; the plan starts where they end.
        after = _seek(spec, spec.input_range[0] + size)
    if after is not None and (after.get("past_end") or (stop is not None and int(after.get("record", 0)) >= stop)):
        starts = []  # batch 0's chunk is the whole slice
    else:
        starts = conn.plan_reads(dataset, batch_size=size, max_chunks=PLAN_MAX_BATCHES, after=after)
        if starts is None:
            return False
        if stop is not None:
            # A chunk starting inside the slice reads at most up to its end (_read_chunk); none starts past it.
            starts = [s for s in starts if int(s.get("record", 0)) < stop]
    now = timezone.now()
    planned_ref = {**(batch.input_ref or {}), "planned": True}
    with transaction.atomic():
        if _fenced(batch).update(input_ref=planned_ref) != 1:
            raise LeaseLost()
        status = lock_run(spec.run_id)
        run_active, cancelling = status in ACTIVE_RUN, status == RunStatus.CANCELLING
        new = [
            _new_batch(
                stage.stage_run_id, i, {"start": start, "planned": True, "size": size}, run_active, cancelling, now
            )
            for i, start in enumerate(starts, start=1)
        ]
        Batch.objects.bulk_create(new, batch_size=1000)
        StageRun.objects.filter(pk=stage.stage_run_id).update(total_batches=len(new) + 1)
        dispatch_on_commit([(str(b.pk), stage.queue, False) for b in new if b.status == BatchStatus.QUEUED])
    batch.input_ref = planned_ref
    return True


def _probe_sizes(spec: RunSpec, stage: StageSpec) -> bool:
    """Whether batch 0 sizes the plan by probing: every per-record stage up to the next global one fuses
    into the read unit (so the probe measures all the work a chunk will cost)."""
    if not FUSION_ENABLED:
        return False
    followers = fusable_followers(spec, stage, planned=True)
    nxt = stage.position + len(followers) + 1
    return nxt >= len(spec.stages) or spec.stages[nxt].is_global or spec.stages[nxt].kind in MARKER_KINDS


def _planned_size(spec: RunSpec, stage: StageSpec, probe: Outcome, seconds: float) -> int:
    """The chunk size for the rest of the input from the probe chunk's cost (see unit_size)."""
    dataset, conn = _reader(spec)
    checkpoint = probe.checkpoint or {}
    end = int(checkpoint.get("offset") or 0)
    # With a record range the probe began where the slice begins, not at byte 0.
    probe_bytes = max(0, end - int((_range_start(spec) or {}).get("offset") or 0))
    total = getattr(conn, "input_bytes", None)
    total = total(dataset) if total else None
    return unit_size(
        ceiling=_ceiling(spec, stage),
        probe_records=probe.records_in,
        probe_seconds=seconds,
        probe_bytes=probe_bytes or probe.records_in * 100,
        remaining_bytes=(total - end) if total is not None and probe_bytes else None,
    )


RECORD_ID_FIELDS = ("id", "_id", "uuid", "key")


def batch_record_ids(spec: RunSpec, stage: StageSpec, batch: Batch, limit: int = 10) -> str:
    """The input records of a batch, named for an operator: their ids (first `limit`) and how many.

    Reads the batch's input again (the source chunk, or the upstream workspace file); a record without
    an id field is named by its position in the input. Used when a batch crashed for good.
    """
    try:
        ref = batch.input_ref or {}
        if "phase" in ref:  # a batch of a partitioned stage: its parts (map, write), or one partition's keys
            parts = ref.get("parts") or [p for unit in ref.get("units") or [] for p in unit["parts"]]
            if not parts:
                return _("the keys of partition %(p)s of every input record") % {"p": ref.get("partition")}
            records, first = [r for chunk in workspace.Parts(parts) for r in chunk], None
        elif stage.kind == "read":
            chunk = _read_chunk(spec, stage, batch, None, ref.get("start"))
            start = ref.get("start") or _range_start(spec) or {}
            first = int(start["record"]) if "record" in start else int(batch.index) * spec.batch_size
            records = chunk[0] if chunk else []
        else:
            records, first = _batch_input(spec, stage, batch, None), None
    except Exception as exc:  # the input may be gone or unreadable: say so rather than hide the crash
        return _("input unreadable (%(error)s)") % {"error": str(exc)[:200]}
    names = []
    for n, record in enumerate(records[:limit]):
        fields = record if isinstance(record, dict) else {}
        rid = next((fields[f] for f in RECORD_ID_FIELDS if fields.get(f) is not None), None)
        names.append(str(rid) if rid is not None else f"#{(first or 0) + n}")
    listed = ", ".join(names)
    if len(records) <= len(names):
        return listed
    return _("%(ids)s and %(more)s more (%(n)s records)") % {
        "ids": listed,
        "more": len(records) - len(names),
        "n": len(records),
    }


def _rereads(spec: RunSpec, stage: StageSpec, chain: bool) -> bool:
    """Whether a read batch skips writing its chunk: the next stage is per-record CPU work this worker chains to."""
    if not (FUSION_ENABLED and chain) or stage.kind != "read" or stage.position + 1 >= len(spec.stages):
        return False
    nxt = spec.stages[stage.position + 1]
    return not nxt.is_global and nxt.kind not in MARKER_KINDS and nxt.queue == stage.queue


def _batch_input(spec: RunSpec, stage: StageSpec, batch: Batch, keeper: LeaseKeeper) -> list[dict]:
    """A per-record batch's input records: the upstream workspace file, or the source chunk read again."""
    ref = batch.input_ref or {}
    if "reread" in ref:
        chunk = _read_chunk(spec, spec.stages[stage.position - 1], batch, keeper, ref["reread"]["start"])
        if chunk is None:
            raise ValueError(_("The input ended before this batch's chunk; was the source changed during the run?"))
        records = chunk[0]
    else:
        records = workspace.read_jsonl(workspace.resolve(ref["path"]))
    if ref.get("records") is not None:
        _reconcile(stage, spec.stages[stage.position - 1], len(records), int(ref["records"]), batch.index)
    return records


def _write_output(spec: RunSpec, stage: StageSpec, batch: Batch, outcome: Outcome) -> None:
    """Write a stage's output records to the attempt's workspace file; it becomes the next stage's input."""
    path = workspace.batch_path(spec.run_id, stage.position, batch.index, batch.attempt)
    workspace.write_jsonl(path, outcome.records)
    outcome.output_path = path
    nxt = spec.stages[stage.position + 1] if stage.position + 1 < len(spec.stages) else None
    if nxt is not None and nxt.partitions:
        # The next stage is partitioned: this unit takes its records' keys now, while the chunks run in parallel.
        partition.keys_emit(spec, nxt, batch, outcome.records or [], path)
    outcome.output_ref = workspace.relative(path)
    outcome.downstream = [(batch.index, {"path": outcome.output_ref, "records": len(outcome.records or [])})]


def _quarantine_rows(result, offset: int = 0) -> list:
    return [(offset + q.index, q.code, q.reason, q.record) for q in result.quarantined]


def _do_per_record(
    spec: RunSpec, stage: StageSpec, batch: Batch, keeper: LeaseKeeper, records: list | None = None, write: bool = True
) -> Outcome:
    if records is None:
        records = _batch_input(spec, stage, batch, keeper)
    kind = _kind(stage.kind)
    result = kind.process(records, _context(spec, stage, batch, keeper))
    n_in, n_out, n_q = len(records), len(result.records), len(result.quarantined)
    if n_in != n_out + result.filtered + n_q:
        raise ValueError(
            _(
                "Stage %(kind)s did not account for every record: "
                "in %(i)s, out %(o)s, filtered %(f)s, quarantined %(q)s."
            )
            % {"kind": stage.kind, "i": n_in, "o": n_out, "f": result.filtered, "q": n_q}
        )
    outcome = Outcome(
        records_in=n_in,
        records_out=n_out,
        filtered=result.filtered,
        quarantined=_quarantine_rows(result),
        usage=list(result.usage or []),
        records=result.records,
    )
    if write:
        _write_output(spec, stage, batch, outcome)
    return outcome


def stage_output_refs(stage_run_id) -> list[str]:
    """Workspace refs of a stage's canonical output, in order (a global stage's parts, in part order)."""
    refs = []
    rows = (
        Batch.objects.filter(stage_run_id=stage_run_id, status=BatchStatus.SUCCEEDED)
        .exclude(output_ref="")
        .order_by("index")
        .values_list("output_ref", flat=True)
    )
    for ref in rows:
        path = workspace.resolve(ref)
        if path.is_dir():
            parts = sorted(path.glob("*.jsonl"), key=lambda p: int(p.stem))
            refs.extend(workspace.relative(p) for p in parts)
        else:
            refs.append(ref)
    return refs


def run_output_chunks(run, position: int | None = None) -> workspace.Parts:
    """The run's output records (the last stage before publish, or `position`), chunk by chunk, in order."""
    run_id = getattr(run, "pk", run)
    spec = run_spec(run_id)
    pos = spec.last_data_position if position is None else position
    return workspace.Parts(stage_output_refs(spec.stages[pos].stage_run_id))


def _do_global(spec: RunSpec, stage: StageSpec, batch: Batch, keeper: LeaseKeeper) -> Outcome:
    if "phase" in (batch.input_ref or {}):
        # A batch of a partitioned global stage (map, reduce or write: tasks/partition.py).
        return partition.phase_run(spec, stage, batch, keeper)
    upstream = spec.stages[stage.position - 1]
    # The lease is checked between input files; `inputs.records` counts what the stage consumed.
    inputs = workspace.Parts(stage_output_refs(upstream.stage_run_id), check=keeper.check)
    if stage.kind == "publish":
        return _do_publish(spec, stage, batch, keeper, inputs)
    if stage.kind == "qc":
        return _do_qc(spec, stage, batch, keeper, inputs)
    kind = _kind(stage.kind)
    final = workspace.global_dir(spec.run_id, stage.position, batch.attempt)
    writer = workspace.PartsWriter(final, spec.batch_size)
    outcome = Outcome()
    try:
        for result in kind.run_global(iter(inputs), _context(spec, stage, batch, keeper)):
            keeper.check()
            writer.write(result.records)
            outcome.filtered += result.filtered
            outcome.quarantined.extend(_quarantine_rows(result))
            outcome.usage.extend(result.usage or [])
        parts = writer.commit()
    except BaseException:
        writer.abort()
        raise
    _reconcile(stage, upstream, inputs.records, _recorded_output(upstream))
    # A global kind's quarantine indexes are not positions in one chunk; number them in order instead.
    outcome.quarantined = [(i, code, reason, record) for i, (_, code, reason, record) in enumerate(outcome.quarantined)]
    outcome.records_in = inputs.records
    outcome.records_out = writer.records
    if outcome.records_in != outcome.records_out + outcome.filtered + len(outcome.quarantined):
        workspace.discard(final)
        raise ValueError(
            _(
                "Stage %(kind)s did not account for every record: "
                "in %(i)s, out %(o)s, filtered %(f)s, quarantined %(q)s."
            )
            % {
                "kind": stage.kind,
                "i": outcome.records_in,
                "o": outcome.records_out,
                "f": outcome.filtered,
                "q": len(outcome.quarantined),
            }
        )
    outcome.output_ref = workspace.relative(final)
    outcome.output_path = final
    outcome.downstream = list(enumerate(parts))
    return outcome


def _do_publish(spec: RunSpec, stage: StageSpec, batch: Batch, keeper: LeaseKeeper, inputs: workspace.Parts) -> Outcome:
    """The publish marker: the publish service writes a dataset version atomically (QC may make it wait)."""
    from .publish import PublishFenced, publish_run

    run = TaskRun.objects.get(pk=spec.run_id)
    upstream = spec.stages[stage.position - 1]

    def fence() -> bool:
        # Runs inside the transaction that flips the version: locks the batch row, so the flip and a
        # takeover by a newer attempt of this batch are serialised.
        keeper.check()
        expires = timezone.now() + timedelta(seconds=keeper.lease_seconds)
        return _fenced(batch).update(lease_expires_at=expires) == 1

    try:
        version = publish_run(
            run=run,
            actor=None,
            chunks=inputs,
            writer=f"batch:{batch.pk}:{batch.attempt}",
            fence=fence,
            expected=(upstream.key, _recorded_output(upstream)),
            fenced_errors=(LeaseLost,),
        )
    except PublishFenced:
        raise LeaseLost() from None
    records = int(getattr(version, "record_count", 0) or 0)
    result = {
        "version_id": version.pk,
        "version": getattr(version, "version", None),
        "location": version.location,
        "checksum": version.checksum,
        "records": records,
    }
    # A redelivered publish returns the version already made without reading the input again.
    return Outcome(records_in=inputs.records or records, records_out=records, result=result)


class _Tee:
    """Passes the input chunks to a consumer (QC) while writing them as this stage's output."""

    def __init__(self, inputs: workspace.Parts, writer):
        self.inputs = iter(inputs)  # one pass, shared by the consumer and the drain after it
        self.writer = writer

    def __iter__(self):
        for chunk in self.inputs:
            self.writer.write(chunk)
            yield chunk


def _do_qc(spec: RunSpec, stage: StageSpec, batch: Batch, keeper: LeaseKeeper, inputs: workspace.Parts) -> Outcome:
    """The qc stage: the QC service builds the lot from the complete input; records pass through."""
    from .qc import qc_stage_run

    final = workspace.global_dir(spec.run_id, stage.position, batch.attempt)
    writer = workspace.PartsWriter(final, spec.batch_size)
    try:
        tee = _Tee(inputs, writer)
        lot = qc_stage_run(
            stage_run=StageRun.objects.select_related("run__pipeline").get(pk=stage.stage_run_id),
            records_iter=iter(tee),
        )
        for _chunk in tee:  # whatever the service did not read still flows downstream
            pass
        upstream = spec.stages[stage.position - 1]
        _reconcile(stage, upstream, inputs.records, _recorded_output(upstream))
        parts = writer.commit()
    except BaseException:
        writer.abort()
        raise
    result = {"lot_id": getattr(lot, "pk", None), "decision": str(getattr(lot, "decision", ""))}
    return Outcome(
        records_in=inputs.records,
        records_out=writer.records,
        output_ref=workspace.relative(final),
        output_path=final,
        downstream=list(enumerate(parts)),
        result=result,
    )


# ---- commit ---------------------------------------------------------------------------------
def _metrics_event(spec: RunSpec, stage: StageSpec, outcome: Outcome, duration_ms: int, succeeded: bool) -> None:
    _metrics_events(spec, [(stage, outcome, duration_ms)], succeeded)


def _metrics_events(spec: RunSpec, parts: list, succeeded: bool) -> None:
    """One raw metrics event per (stage, outcome, duration) of a commit, in one INSERT; token usage too."""
    try:
        from metrics import services as metrics_services
    except ImportError:
        return
    record = getattr(metrics_services, "batch_events_record", None)
    if record is None:
        return
    now = timezone.now()
    events = []
    for stage, outcome, duration_ms in parts:
        # The dashboard's "model version" dimension: what the server reported, else what was configured.
        model_config = spec.cache.get(("model_config", stage.model_config_id))
        reported = outcome.usage[0] if outcome.usage else {}
        events.append(
            {
                "ts": now,
                "project_id": spec.project_id,
                "pipeline_id": spec.pipeline_id,
                "run_id": spec.run_id,
                "stage_template": stage.kind,
                "records_in": outcome.records_in,
                "records_out": outcome.records_out,
                "records_filtered": outcome.filtered,
                "records_failed": len(outcome.quarantined),
                "duration_ms": duration_ms,
                "succeeded": succeeded,
                "model_name": reported.get("model_name") or getattr(model_config, "model_name", "") or "",
                "model_version": reported.get("model_version") or getattr(model_config, "model_version", "") or "",
            }
        )
    record(events)
    for stage, outcome, _ms in parts:
        if outcome.usage:
            _usage_record(spec, stage, outcome.usage, now)


def _usage_record(spec: RunSpec, stage: StageSpec, usage: list, now) -> None:
    """Token usage and call outcomes of one attempt, whatever became of the batch (calls were made)."""
    try:
        from metrics import services as metrics_services
    except ImportError:
        return
    many = getattr(metrics_services, "token_usage_record_many", None)
    if many is None or not usage:
        return
    base = {
        "ts": now,
        "project_id": spec.project_id,
        "pipeline_id": spec.pipeline_id,
        "run_id": spec.run_id,
        "stage_template": stage.kind,
    }
    many([{**base, **u} for u in usage])


def _run_tokens_add(spec: RunSpec, usage: list | None) -> None:
    """Add the tokens of an attempt that did not commit to the run (its calls were made and paid for).

    Call with the run row locked. A commit adds its tokens in its own run UPDATE; so the run's counters
    always equal the sum of its tokens_usage rows.
    """
    keys = ("prompt_tokens", "completion_tokens", "retry_tokens")
    sums = {k: sum(int(u.get(k) or 0) for u in usage or []) for k in keys}
    if any(sums.values()):
        TaskRun.objects.filter(pk=spec.run_id).update(**{k: F(k) + v for k, v in sums.items()})


def _new_batch(stage_run_id, index: int, input_ref: dict, run_active: bool, cancelling: bool, now) -> Batch:
    status = BatchStatus.CANCELLED if cancelling else (BatchStatus.QUEUED if run_active else BatchStatus.PENDING)
    return Batch(
        stage_run_id=stage_run_id,
        index=index,
        status=status,
        input_ref=input_ref,
        queued_at=now if status == BatchStatus.QUEUED else None,
        finished_at=now if cancelling else None,
    )


def _stage_counters_add_many(items: list, now) -> dict:
    """Add the counters of every stage of a unit to their stage rows with ONE UPDATE ... RETURNING.

    `items` lists (stage, outcome, extra) where extra maps a column (total_batches, result) to a value to
    set on that stage's row. Returns {stage_run_id: completion fields}. The caller holds the run row's lock,
    so two commits of one run never race for these rows (lock order: batch, run, stages).
    """
    st = StageRun._meta.db_table
    ids = [_sql_value("id", s.stage_run_id, StageRun) for s, _o, _e in items]

    def case(values: list, else_sql: str) -> tuple[str, list]:
        # CASE id WHEN <id1> THEN <v1> ... ELSE <else> END; one parameter pair per stage.
        params: list = []
        for sid, v in zip(ids, values, strict=True):
            params += [sid, v]
        return f"CASE id {' '.join(['WHEN %s THEN %s'] * len(ids))} ELSE {else_sql} END", params

    sets, params = [], []
    for column, values in (
        ("records_in", [o.records_in for _s, o, _e in items]),
        ("records_out", [o.records_out for _s, o, _e in items]),
        ("records_filtered", [o.filtered for _s, o, _e in items]),
        ("records_failed", [len(o.quarantined) for _s, o, _e in items]),
    ):
        if len(set(values)) == 1:
            sets.append(f"{column} = {column} + %s")
            params.append(values[0])
        else:
            sql, p = case(values, "0")
            sets.append(f"{column} = {column} + {sql}")
            params += p
    for column in ("total_batches", "result"):
        with_value = [(i, e[column]) for i, (_s, _o, e) in enumerate(items) if column in e]
        if not with_value:
            continue
        whens, p = [], []
        for i, value in with_value:
            whens.append("WHEN %s THEN %s")
            p += [ids[i], _sql_value(column, value, StageRun) if column == "result" else value]
        sets.append(f"{column} = CASE id {' '.join(whens)} ELSE {column} END")
        params += p
    sql = (
        f"UPDATE {st} SET batches_done = batches_done + 1, "  # noqa: S608 - table from model meta, values as parameters
        + ", ".join(sets)
        + ", status = CASE WHEN status IN (%s, %s) THEN %s ELSE status END, "
        "started_at = COALESCE(started_at, %s), updated_at = %s "
        f"WHERE id IN ({', '.join(['%s'] * len(ids))}) RETURNING id, total_batches, batches_done, status"
    )
    params += [
        StageRunStatus.PENDING,
        StageRunStatus.WAITING,
        StageRunStatus.RUNNING,
        _sql_value("started_at", now, StageRun),
        _sql_value("updated_at", now, StageRun),
        *ids,
    ]
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    out = {}
    for sid, total, done, status in rows:
        out[_as_uuid(sid)] = {
            "total_batches": total,
            "batches_done": done,
            "status": status,
        }
    return out


def _batch_succeed(batch: Batch, outcome: Outcome, duration_ms: int, now) -> int:
    """The fenced success UPDATE of the batch row, in raw SQL (one statement, no ORM); returns rows updated."""
    from django.db import connection

    sql = (
        f"UPDATE {Batch._meta.db_table} SET status = %s, canonical_attempt = %s, output_ref = %s, "  # noqa: S608
        "checkpoint = %s, records_in = %s, records_out = %s, records_filtered = %s, records_failed = %s, "
        "duration_ms = %s, error = '', lease_expires_at = NULL, finished_at = %s "
        "WHERE id = %s AND attempt = %s AND lease_owner = %s AND status = %s"
    )
    checkpoint = Batch._meta.get_field("checkpoint").get_db_prep_save(outcome.checkpoint, connection)
    params = [
        BatchStatus.SUCCEEDED,
        batch.attempt,
        outcome.output_ref,
        checkpoint,
        outcome.records_in,
        outcome.records_out,
        outcome.filtered,
        len(outcome.quarantined),
        duration_ms,
        _sql_value("finished_at", now),
        _sql_value("id", batch.pk),
        batch.attempt,
        batch.lease_owner,
        BatchStatus.RUNNING,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def _fused_batch(stage: StageSpec, head: Batch, outcome: Outcome, now) -> Batch:
    """The row of a stage's batch that ran fused into the head batch: born succeeded, in the same transaction."""
    return Batch(
        stage_run_id=stage.stage_run_id,
        index=head.index,
        status=BatchStatus.SUCCEEDED,
        attempt=head.attempt,
        canonical_attempt=head.attempt,
        input_ref={"fused_into": str(head.pk)},
        output_ref=outcome.output_ref,
        records_in=outcome.records_in,
        records_out=outcome.records_out,
        records_filtered=outcome.filtered,
        records_failed=len(outcome.quarantined),
        duration_ms=outcome.duration_ms,
        started_at=now,
        finished_at=now,
    )


def _batch_commit(
    spec: RunSpec,
    stage: StageSpec,
    batch: Batch,
    outcome: Outcome,
    duration_ms: int,
    chain: bool = False,
    fused: list | None = None,
):
    """The success transaction: fenced batch update, quarantine, counters, downstream batches, metrics.

    `fused` lists (stage, outcome) of the following per-record stages that ran on this batch's records in
    memory: their batch rows are created succeeded here, with their own counters, quarantine and metrics,
    so they commit (or are lost and recomputed) together with this batch.

    With chain=True, the next stage's batch of the same index (per-record, same queue) is not sent:
    its id is returned so this worker claims it at once and keeps the records in memory. If the worker
    dies before that, the batch stays QUEUED and the reaper re-sends it.
    """
    now = timezone.now()
    to_send: list[tuple[str, str, bool]] = []
    chained = None
    fused = fused or []
    last_stage, last_out = fused[-1] if fused else (stage, outcome)
    with transaction.atomic():
        n = _batch_succeed(batch, outcome, duration_ms, now)
        if n != 1:
            raise LeaseLost()
        parts = [(stage, outcome, batch.pk)]
        fused_rows = [_fused_batch(s, batch, o, now) for s, o in fused]
        parts.extend((s, o, row.pk) for (s, o), row in zip(fused, fused_rows, strict=True))
        usage = [u for _s, o, _b in parts for u in o.usage]
        prompt = sum(int(u.get("prompt_tokens") or 0) for u in usage)
        completion = sum(int(u.get("completion_tokens") or 0) for u in usage)
        retry = sum(int(u.get("retry_tokens") or 0) for u in usage)
        # Counters add with UPDATE ... RETURNING: one round trip for the run and one per stage.
        run_status = _returning(
            f"UPDATE {TaskRun._meta.db_table} SET "  # noqa: S608 - table names from model meta, values as parameters
            "status = CASE WHEN status = %s THEN %s ELSE status END, "
            "records_in = records_in + %s, records_out = records_out + %s, "
            "records_filtered = records_filtered + %s, records_failed = records_failed + %s, "
            "prompt_tokens = prompt_tokens + %s, completion_tokens = completion_tokens + %s, "
            "retry_tokens = retry_tokens + %s "
            "WHERE id = %s RETURNING status",
            [
                # A waiting run stays waiting until the reaper wakes its batches (other stages may progress).
                RunStatus.PENDING,
                RunStatus.RUNNING,
                sum(o.records_out for s, o, _b in parts if s.position == 0),
                sum(o.records_out for s, o, _b in parts if s.position == spec.last_data_position),
                sum(o.filtered for _s, o, _b in parts),
                sum(len(o.quarantined) for _s, o, _b in parts),
                prompt,
                completion,
                retry,
                _sql_value("id", spec.run_id, TaskRun),
            ],
        )[0]
        extra: dict = {}
        if outcome.end_of_input:
            extra["total_batches"] = batch.index + 1
        if outcome.result is not None:
            extra["result"] = outcome.result
        rows = _stage_counters_add_many([(stage, outcome, extra), *((s, o, {}) for s, o in fused)], now)
        row = rows[_as_uuid(stage.stage_run_id)]
        fused_stage_rows = [rows[_as_uuid(s.stage_run_id)] for s, _o in fused]
        cancelling = run_status == RunStatus.CANCELLING
        run_active = run_status in ACTIVE_RUN
        new = list(fused_rows)
        if stage.kind == "read" and not outcome.end_of_input and not _planned(batch):
            new.append(
                _new_batch(
                    stage.stage_run_id, batch.index + 1, {"start": outcome.next_start}, run_active, cancelling, now
                )
            )
        nxt = spec.stages[last_stage.position + 1] if last_stage.position + 1 < len(spec.stages) else None
        if nxt is not None and not nxt.is_global:
            for index, ref in last_out.downstream:
                input_ref = ref if isinstance(ref, dict) else {"path": ref}
                new.append(_new_batch(nxt.stage_run_id, index, input_ref, run_active, cancelling, now))
        if new:
            Batch.objects.bulk_create(new)
            by_sr = {s.stage_run_id: s for s in spec.stages}
            for b in new:
                if b.status != BatchStatus.QUEUED:
                    continue
                if (
                    chain
                    and chained is None
                    and nxt is not None
                    and b.stage_run_id == nxt.stage_run_id
                    and nxt.queue == last_stage.queue
                ):
                    chained = b.pk
                    continue
                to_send.append((str(b.pk), by_sr[b.stage_run_id].queue, False))
        quarantined = [
            QuarantinedRecord(
                stage_run_id=s.stage_run_id,
                batch_id=batch_pk,
                attempt=batch.attempt,
                record_index=idx,
                code=str(code)[:50],
                reason=str(reason),
                record=record,
            )
            for s, o, batch_pk in parts
            for idx, code, reason, record in o.quarantined
        ]
        if quarantined:
            QuarantinedRecord.objects.bulk_create(quarantined, ignore_conflicts=True)
        _metrics_events(spec, [(stage, outcome, duration_ms), *((s, o, o.duration_ms) for s, o in fused)], True)
        to_send.extend(_stage_maybe_complete(spec, stage, run_active, cancelling, now, row=row))
        # A fused stage normally completes through the recursion above; check again in case it did not.
        for (s, _o), srow in zip(fused, fused_stage_rows, strict=True):
            if srow["total_batches"] is not None and srow["batches_done"] >= srow["total_batches"]:
                to_send.extend(_stage_maybe_complete(spec, s, run_active, cancelling, now))
        if cancelling:
            _run_cancel_finalize(spec.run_id)
        dispatch_on_commit(to_send)
    return chained


def _stage_maybe_complete(
    spec: RunSpec, stage: StageSpec, run_active: bool, cancelling: bool, now, row: dict | None = None
) -> list:
    """If every batch of the stage is done and its total is known, complete it and open the next stage."""
    if row is None:
        row = StageRun.objects.values("total_batches", "batches_done", "status").get(pk=stage.stage_run_id)
    if row["total_batches"] is None or row["batches_done"] < row["total_batches"]:
        return []
    if row["status"] == StageRunStatus.SUCCEEDED:
        return []
    if stage.is_global and stage.kind not in MARKER_KINDS:
        # A partitioned global stage completes phase by phase (tasks/partition.py); None: it is complete.
        more = partition.stage_advance(spec, stage, run_active, cancelling, now)
        if more is not None:
            return more
    StageRun.objects.filter(pk=stage.stage_run_id).exclude(status=StageRunStatus.SUCCEEDED).update(
        status=StageRunStatus.SUCCEEDED, finished_at=now, status_reason=""
    )
    if stage.position + 1 >= len(spec.stages):
        if TaskRun.objects.filter(pk=spec.run_id, status__in=ACTIVE_RUN).update(
            status=RunStatus.SUCCEEDED, finished_at=now, status_reason=""
        ):
            run_event_record(run_id=spec.run_id, kind=RunEventKind.SUCCEEDED, now=now)
        return []
    nxt = spec.stages[stage.position + 1]
    if nxt.is_global:
        if Batch.objects.filter(stage_run_id=nxt.stage_run_id).exists():
            return []
        if nxt.partitions:
            opened = partition.stage_open(spec, nxt, run_active, cancelling, now)
            if opened is not None:
                return opened
        unit = _new_batch(nxt.stage_run_id, 0, {"from": stage.position}, run_active, cancelling, now)
        unit.save()
        StageRun.objects.filter(pk=nxt.stage_run_id).update(total_batches=1)
        return [(str(unit.pk), nxt.queue, True)] if unit.status == BatchStatus.QUEUED else []
    total = Batch.objects.filter(stage_run_id=nxt.stage_run_id).count()
    StageRun.objects.filter(pk=nxt.stage_run_id).update(total_batches=total)
    # The next stage may already have done all its batches (or have none: empty input).
    return _stage_maybe_complete(spec, nxt, run_active, cancelling, now)


def run_advance(run_id) -> list:
    """Re-check completion of every stage of a run (reaper, resume); returns batches to dispatch."""
    spec = run_spec(run_id)
    status = lock_run(run_id)
    now = timezone.now()
    out = []
    for stage in spec.stages:
        out.extend(_stage_maybe_complete(spec, stage, status in ACTIVE_RUN, status == RunStatus.CANCELLING, now))
    return out


def _run_cancel_finalize(run_id) -> bool:
    """A cancelling run with no batch in flight becomes cancelled (its leftovers cancelled too)."""
    if Batch.objects.filter(stage_run__run_id=run_id, status=BatchStatus.RUNNING).exists():
        return False
    now = timezone.now()
    n = TaskRun.objects.filter(pk=run_id, status=RunStatus.CANCELLING).update(
        status=RunStatus.CANCELLED, finished_at=now
    )
    if n:
        Batch.objects.filter(
            stage_run__run_id=run_id, status__in=[BatchStatus.PENDING, BatchStatus.QUEUED, BatchStatus.WAITING]
        ).update(status=BatchStatus.CANCELLED, finished_at=now)
        StageRun.objects.filter(run_id=run_id).exclude(status__in=StageRunStatus.terminal()).update(
            status=StageRunStatus.CANCELLED, finished_at=now
        )
    return bool(n)


def _batch_fail(
    spec: RunSpec, stage: StageSpec, batch: Batch, error: str, duration_ms: int, usage: list | None = None
) -> None:
    """An error the stage raised: retry within the failure budget, else fail the stage and the run."""
    now = timezone.now()
    with transaction.atomic():
        n = _fenced(batch).update(
            status=BatchStatus.FAILED,
            failures=F("failures") + 1,
            error=error[:4000],
            lease_expires_at=None,
            duration_ms=duration_ms,
            finished_at=now,
        )
        if n != 1:
            return
        failures = Batch.objects.values_list("failures", flat=True).get(pk=batch.pk)
        run_status = lock_run(spec.run_id)
        StageRun.objects.filter(pk=stage.stage_run_id).update(last_error=error[:4000])
        _metrics_event(spec, stage, Outcome(usage=list(usage or [])), duration_ms, False)
        _run_tokens_add(spec, usage)
        if run_status == RunStatus.CANCELLING:
            _run_cancel_finalize(spec.run_id)
            return
        if failures < spec.max_attempts:
            if run_status in ACTIVE_RUN:
                Batch.objects.filter(pk=batch.pk, status=BatchStatus.FAILED).update(
                    status=BatchStatus.QUEUED, queued_at=now, finished_at=None
                )
                dispatch_on_commit([(str(batch.pk), stage.queue, stage.is_global)])
            # Otherwise the run already stopped: the batch stays failed until a retry or resume.
            return
        params = {
            "stage": stage.key,
            "index": batch.index,
            "n": failures,
            "error": error.splitlines()[0][:500] if error else "",
        }
        reason = reason_render("batch_failed", params)
        StageRun.objects.filter(pk=stage.stage_run_id).exclude(status__in=StageRunStatus.terminal()).update(
            status=StageRunStatus.FAILED, status_reason=reason, finished_at=now
        )
        if TaskRun.objects.filter(pk=spec.run_id, status__in=ACTIVE_RUN).update(
            status=RunStatus.FAILED,
            status_reason=reason,
            status_code="batch_failed",
            status_params=params,
            finished_at=now,
        ):
            run_event_record(run_id=spec.run_id, kind=RunEventKind.FAILED, now=now)


def _batch_wait(spec: RunSpec, stage: StageSpec, batch: Batch, exc: BaseException) -> None:
    """The stage cannot proceed now (breaker open): WAITING until retry_after, no attempt budget used."""
    now = timezone.now()
    retry_after = float(getattr(exc, "retry_after", 30.0) or 30.0)
    with transaction.atomic():
        n = _fenced(batch).update(
            status=BatchStatus.WAITING,
            not_before=now + timedelta(seconds=retry_after),
            error=str(exc)[:4000],
            lease_expires_at=None,
        )
        if n != 1:
            return
        # The calls that opened the breaker (deadlines, UNAVAILABLE) were made: count them.
        _usage_record(spec, stage, list(getattr(exc, "usage", None) or []), now)
        lock_run(spec.run_id)
        _run_tokens_add(spec, getattr(exc, "usage", None))
        StageRun.objects.filter(
            pk=stage.stage_run_id, status__in=[StageRunStatus.PENDING, StageRunStatus.RUNNING]
        ).update(status=StageRunStatus.WAITING, status_reason=str(exc)[:500])
        code, params = _wait_reason(stage, exc, retry_after)
        before = TaskRun.objects.values_list("status", "status_code").get(pk=spec.run_id)
        changed = TaskRun.objects.filter(pk=spec.run_id, status__in=[RunStatus.RUNNING, RunStatus.WAITING]).update(
            status=RunStatus.WAITING,
            status_code=code,
            status_params=params,
            status_reason=reason_render(code, params, str(exc)[:500]),
        )
        # The parked publish unit is re-tried while the lot waits; only the first wait is a transition.
        if changed and code in HUMAN_WAITS and before != (RunStatus.WAITING, code):
            run_event_record(run_id=spec.run_id, kind=RunEventKind.WAITING_FOR_REVIEW, now=now)


def _wait_reason(stage: StageSpec, exc: BaseException, retry_after: float) -> tuple[str, dict]:
    """What a waiting run waits for, as a code and parameters (tasks/reasons.py)."""
    code = getattr(exc, "wait_code", None)
    if code:
        return code, {**(getattr(exc, "wait_params", None) or {}), "stage": stage.key}
    return "stage_waiting", {"stage": stage.key, "seconds": round(retry_after), "detail": str(exc)[:300]}


def _batch_abort(spec: RunSpec, batch: Batch) -> None:
    with transaction.atomic():
        if _fenced(batch).update(status=BatchStatus.CANCELLED, lease_expires_at=None, finished_at=timezone.now()):
            _run_cancel_finalize(spec.run_id)


def batch_execute(*, batch_id, owner: str, chain: bool = True) -> str:
    """Claim, process and commit one batch, then go on with its next per-record stage in the same process.

    Returns what happened to the first batch (for logs and tests).
    """
    first = None
    records = None
    while batch_id is not None:
        result, batch_id, records = _batch_execute_one(batch_id=batch_id, owner=owner, records=records, chain=chain)
        first = first or result
    return first


def _batch_execute_one(*, batch_id, owner: str, records: list | None, chain: bool):
    batch = batch_claim(batch_id=batch_id, owner=owner)
    if batch is None:
        return "skipped", None, None
    spec = run_spec(batch._run_id)
    stage = spec.stages[batch._position]
    started = time.monotonic()
    outcome = None
    fused: list = []
    with LeaseKeeper(batch, spec.run_id, batch._lease_seconds) as keeper:
        try:
            probe = False
            if _may_plan(spec, stage, batch):
                # Batch 0 of a splittable source: probe the unit's cost on its own (small) chunk, then plan
                # the rest by that cost. When a stage that does not fuse follows (a model stage), its cost
                # is unknown here: plan first, in chunks of the ceiling, as the source allows.
                probe = _probe_sizes(spec, stage)
                if probe:
                    batch.input_ref = {**(batch.input_ref or {}), "size": min(PROBE_RECORDS, _ceiling(spec, stage))}
                else:
                    _plan_reads(spec, stage, batch, None, _ceiling(spec, stage))
            planned = stage.kind == "read" and (probe or _planned(batch))
            followers = fusable_followers(spec, stage, planned=planned)
            # The probe's cost is this thread's CPU time: the fused stages are CPU work, and other processes
            # on a busy machine do not make it look dearer than it is.
            work_started = time.thread_time()
            if stage.kind == "read":
                write = not (followers or _rereads(spec, stage, chain))
                outcome = _do_read(spec, stage, batch, keeper, write=write)
            elif stage.is_global:
                outcome = _do_global(spec, stage, batch, keeper)
            else:
                outcome = _do_per_record(spec, stage, batch, keeper, records=records, write=not followers)
            if followers and not outcome.end_of_input:
                fused = _run_fused(spec, stage, batch, keeper, outcome, followers)
            if probe and not outcome.end_of_input:
                keeper.check()
                size = _planned_size(spec, stage, outcome, time.thread_time() - work_started)
                _plan_reads(spec, stage, batch, outcome.checkpoint, size)
            keeper.check()
        except LeaseLost:
            _discard(outcome)
            return "lease_lost", None, None
        except Aborted:
            _discard(outcome)
            _batch_abort(spec, batch)
            return "aborted", None, None
        except Exception as exc:
            _discard(outcome)
            if isinstance(exc, StageWaiting) or getattr(exc, "retry_after", None) is not None:
                _batch_wait(spec, stage, batch, exc)
                return "waiting", None, None
            logger.warning("batch %s (stage %s) failed: %s", batch.pk, stage.key, exc, exc_info=True)
            _batch_fail(
                spec,
                stage,
                batch,
                f"{type(exc).__name__}: {exc}",
                _ms(started),
                list(getattr(exc, "usage", None) or []),
            )
            return "failed", None, None
    fused_ms = sum(o.duration_ms for _s, o in fused)
    try:
        chained = _batch_commit(spec, stage, batch, outcome, _ms(started) - fused_ms, chain=chain, fused=fused)
    except LeaseLost:
        _discard(outcome)
        return "lease_lost", None, None
    last = fused[-1][1] if fused else outcome
    return "succeeded", chained, (last.records if chained is not None else None)


# Consecutive per-record CPU stages run as one unit per batch (docs/engine.md "Fusion"); tests switch it off
# to compare a fused run with an unfused one.
FUSION_ENABLED = True
# Splittable sources are planned by read batch 0 (docs/engine.md "Planned reads"); tests switch it off
# to cover the chained reads that other sources use.
PLANNED_READS_ENABLED = True
# Global kinds that can run partitioned (exact dedup) do so on every worker (tasks/partition.py), decided when a
# run starts (its snapshot); tests switch it off to compare with the one-unit run.
PARTITIONED_ENABLED = True
# A plan creates its batch rows and messages in one transaction; an input of more chunks than this
# (20 million records at the default 1000 per batch) is read in a chain instead.
PLAN_MAX_BATCHES = 20_000


def fusable_followers(spec: RunSpec, stage: StageSpec, planned: bool = False) -> list[StageSpec]:
    """The per-record stages after `stage` that run fused into its batch: same queue, no model, not global."""
    # A chained read batch is never a head: it commits first so the next read can start on another
    # worker. A planned read can: every other read batch exists already.
    if not FUSION_ENABLED or stage.is_global or (stage.kind == "read" and not planned):
        return []
    out = []
    for nxt in spec.stages[stage.position + 1 :]:
        if nxt.is_global or nxt.kind in MARKER_KINDS or nxt.model_config_id or nxt.queue != stage.queue:
            break
        out.append(nxt)
    return out


def _run_fused(
    spec: RunSpec, head: StageSpec, batch: Batch, keeper: LeaseKeeper, head_out: Outcome, followers: list
) -> list:
    """Run the follower stages on the head's records in memory; write only the last one's output.

    A follower that raises ends the fusion there: the stages before it commit with this batch and the
    failing stage gets an ordinary batch (its own retry budget, error and status), as if never fused.
    Returns the (stage, outcome) pairs that ran.
    """
    fused = []
    last_stage, last_out = head, head_out
    for stage in followers:
        keeper.check()
        t0 = time.monotonic()
        try:
            out = _do_per_record(spec, stage, batch, keeper, records=last_out.records, write=False)
        except (LeaseLost, Aborted):
            raise
        except Exception as exc:
            logger.info("stage %s raised while fused (%s); it runs as its own batch", stage.key, exc)
            break
        out.duration_ms = _ms(t0)
        fused.append((stage, out))
        last_stage, last_out = stage, out
    _write_output(spec, last_stage, batch, last_out)
    if fused:
        # The head's own output was never written: only the last fused stage's is kept.
        head_out.output_path = last_out.output_path
        head_out.downstream = []
    return fused


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _discard(outcome: Outcome | None) -> None:
    if outcome is not None and outcome.output_path is not None:
        workspace.discard(outcome.output_path)
        if outcome.output_path.suffix == ".jsonl":
            workspace.discard(outcome.output_path.with_suffix(".keys"))  # keys emitted for a partitioned stage


def worker_owner(hostname: str | None) -> str:
    """The lease owner name of this process: '<celery hostname>:<pid>'."""
    return f"{hostname or 'local'}:{os.getpid()}"
