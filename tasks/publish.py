"""Publish and archive: a run's output becomes a dataset version atomically, with checksum and lineage.

Publish reserves a version number with a BUILDING row, streams the run's output through the sink
connector's atomic writer (nothing visible until commit), then flips the row to PUBLISHED in one
transaction with the lineage and the run's link. Any failure aborts the writer (or removes the
committed file) and leaves the row FAILED: never a published row without its file, nor a file
without its row. Archive moves a version's file under settings.ARCHIVE_DIR and marks it ARCHIVED;
its lineage stays readable.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone
from django.utils.translation import gettext as _

from catalog.choices import DatasetVersionStatus
from catalog.locations import TemplateSyntaxError, has_version_placeholder, render_location
from catalog.models import Dataset, DatasetVersion, DataSource
from dataflare_portal.core import registry
from dataflare_portal.core.models import AuditAction
from dataflare_portal.core.services import audit_record, audit_snapshot

from .choices import LotDecision, RunEventKind
from .events import run_event_record
from .models import StageRun, TaskRun
from .qc import QCError, can_override, qc_lot_override, run_qc_lot

PUBLISH_WAIT_SECONDS = 30.0


class PublishBlocked(QCError):
    """QC has not accepted the run's lot; `retry_after` makes the engine wait instead of failing."""

    def __init__(
        self, message: str, retry_after: float | None = PUBLISH_WAIT_SECONDS, wait_code: str = "", wait_params=None
    ):
        super().__init__(message)
        self.retry_after = retry_after
        # What the engine stores as the run's reason while it waits (tasks/reasons.py).
        self.wait_code = wait_code
        self.wait_params = wait_params or {}


class PublishError(ValueError):
    """The run cannot be published as configured (no sink, bad location, writer failure)."""


# ---- Where to publish ---------------------------------------------------------------------------
def _publish_stage(run: TaskRun) -> StageRun | None:
    return StageRun.objects.filter(run=run, kind="publish").order_by("-position").first()


def _lookup(model, ref, project_id):
    if ref is None or ref == "":
        return None
    if isinstance(ref, int) or str(ref).isdigit():
        return model.objects.filter(pk=int(ref)).first()
    return model.objects.filter(project_id=project_id, name=ref).first()


def publish_target(run: TaskRun) -> tuple[Dataset, DataSource, str, str | None, list[str] | None]:
    """(dataset, sink source, format, location template or None, fields) from the publish stage and pipeline."""
    stage = _publish_stage(run)
    config = (stage.config if stage is not None else {}) or {}
    dataset = _lookup(Dataset, config.get("dataset"), run.project_id) or run.pipeline.output_dataset
    if dataset is None:
        raise PublishError(_("The pipeline has no output dataset to publish to."))
    source = _lookup(DataSource, config.get("data_source"), run.project_id) or dataset.source
    if source is None:
        raise PublishError(_("The output dataset %(name)s has no data source.") % {"name": dataset.name})
    fmt = config.get("format") or dataset.format
    return dataset, source, fmt, config.get("location"), config.get("fields")


def version_location(dataset: Dataset, template: str | None, version: int, run_id, fmt: str) -> str:
    """The location of one version: the stage's template, or the dataset's location with .v<N> inserted."""
    # Never str.format: a user's "{run_id.__init__...}" would walk to django.conf.settings (issue 11).
    text = template or (dataset.location if has_version_placeholder(dataset.location) else None)
    if text:
        try:
            return render_location(text, dataset=dataset.name, version=version, run_id=run_id)
        except TemplateSyntaxError as exc:
            raise PublishError(exc.message) from exc
    base = dataset.location
    if fmt in ("table", "query"):
        return f"{base}_v{version}"
    path = Path(base)
    if path.suffix:
        return str(path.with_name(f"{path.stem}.v{version}{path.suffix}"))
    return f"{base.rstrip('/')}/v{version}.{fmt}"


# ---- Lineage --------------------------------------------------------------------------------------
def _model_versions(run: TaskRun) -> list[dict]:
    from pipelines.models import ModelConfig

    stages = (run.pipeline_snapshot or {}).get("stages") or []
    ids = {s.get("model_config_id") for s in stages if s.get("model_config_id")}
    configs = {mc.pk: mc for mc in ModelConfig.objects.filter(pk__in=ids)}
    out = []
    for s in stages:
        mc = configs.get(s.get("model_config_id"))
        if mc is not None:
            out.append(
                {"stage": s.get("key"), "model_config": mc.name, "model": mc.model_name, "version": mc.model_version}
            )
    if not stages:
        for stage in run.pipeline.stages.select_related("model_config").exclude(model_config=None):
            mc = stage.model_config
            out.append(
                {"stage": stage.key, "model_config": mc.name, "model": mc.model_name, "version": mc.model_version}
            )
    return out


def _qc_summary(run: TaskRun) -> dict:
    lot = run_qc_lot(run.pk)
    if lot is None:
        return {"decision": "none"}
    return {
        "lot_id": lot.pk,
        "decision": lot.decision,
        "lot_size": lot.lot_size,
        "sample_size": lot.sample_size,
        "acceptance_number": lot.acceptance_number,
        "defects": (lot.evidence or {}).get("defects_in_sample"),
        "policy": lot.policy.name,
        "override_reason": lot.override_reason,
        "override_by": lot.override_by.get_username() if lot.override_by_id else "",
    }


# ---- Publish --------------------------------------------------------------------------------------
def _check_qc(run: TaskRun, actor, override_reason: str | None) -> None:
    has_qc = StageRun.objects.filter(run=run, kind="qc").exists()
    if not has_qc:
        return
    lot = run_qc_lot(run.pk)
    if lot is not None and lot.decision in LotDecision.publishable():
        return
    if override_reason:
        if not can_override(actor):
            raise PermissionDenied(_("Only an admin may publish against a QC decision."))
        if lot is None:
            raise PublishBlocked(_("The QC lot does not exist yet; nothing to override."))
        qc_lot_override(lot=lot, actor=actor, reason=override_reason)
        return
    state = lot.decision if lot is not None else "none"
    label = lot.get_decision_display() if lot is not None else _("not created yet")
    raise PublishBlocked(
        _("QC has not accepted this run's lot (%(state)s); an admin may override with a reason.") % {"state": label},
        retry_after=PUBLISH_WAIT_SECONDS if actor is None else None,
        wait_code="qc_review",
        wait_params={"state": state},
    )


def _output_chunks(run: TaskRun):
    from .engine import run_output_chunks

    return run_output_chunks(run)


def _copy_records(chunks, writer, fmt: str) -> None:
    """Stream the output into the sink writer; JSONL workspace files go byte for byte into a JSONL sink.

    The workspace and the JSONL writers encode a record identically, so the bytes need no decode and
    re-encode (the checksum and file are the same either way; tests compare both paths).
    """
    raw = getattr(chunks, "raw", None)
    write_raw = getattr(writer, "write_jsonl_bytes", None)
    first = True
    if fmt == "jsonl" and raw is not None and write_raw is not None:
        for data, count in raw():
            write_raw(data, count)
            if first:
                first = False
                fault_point("writing")
        return
    for chunk in chunks:
        writer.write(chunk)
        if first:
            first = False
            fault_point("writing")


# ---- Fences and debris ------------------------------------------------------------------------
# A manual publish (admin, API) is synchronous; a BUILDING row of one older than this is abandoned.
MANUAL_STALE_SECONDS = 3600


class PublishFenced(Exception):  # noqa: N818 - a state, not an error
    """This attempt no longer owns the publish (its lease is lost or another attempt took the version)."""


def fault_point(name: str) -> None:
    """A named point of a publish; real-process tests stop or kill a worker here (tasks/tests/worker_main.py).

    Points: reserved (row committed, no file), writing (first chunk in the temp file), written (temp file
    complete, before the fenced transaction), renamed (file in place, transaction not committed),
    published (transaction committed, batch not yet), done (the publish call returns or raises).
    """


def _batch_writer_alive(writer: str) -> bool:
    from .choices import BatchStatus
    from .models import Batch

    _kind, batch_id, attempt = writer.split(":", 2)
    return Batch.objects.filter(pk=batch_id, attempt=int(attempt), status=BatchStatus.RUNNING).exists()


def writer_alive(version: DatasetVersion, now=None) -> bool:
    """Whether the attempt named on a BUILDING row may still flip it (its batch lease, or a fresh manual publish)."""
    writer = version.writer or ""
    if writer.startswith("batch:"):
        try:
            return _batch_writer_alive(writer)
        except (ValueError, ValidationError):
            return False
    if writer.startswith("manual:"):
        now = now or timezone.now()
        return (now - version.created_at).total_seconds() < MANUAL_STALE_SECONDS
    return False


def _staging_prefix(version: DatasetVersion) -> str:
    return f"v{version.pk}-"


def version_debris_clear(version: DatasetVersion, conn=None) -> list[str]:
    """Remove what publish attempts of a BUILDING version left in the sink: its temp files, and the file
    at its location unless a published version owns that path. Returns the paths removed."""
    from catalog.connectors import ConnectorError, get_connector

    if not version.location:
        return []
    try:
        conn = conn or get_connector(version.dataset.source)
        # Temp files of a file sink, unfinished multipart uploads of an object store; a table sink's temp
        # table died with its session. Each connector knows its own debris (Connector.discard_staged).
        removed = list(conn.discard_staged(version.location, _staging_prefix(version)))
    except (ConnectorError, OSError, ValueError):
        return []
    owned = (
        DatasetVersion.objects.filter(
            dataset__source_id=version.dataset.source_id,
            location=version.location,
            status=DatasetVersionStatus.PUBLISHED,
        )
        .exclude(pk=version.pk)
        .exists()
    )
    if not owned:
        try:
            gone = conn.remove_location(version.location)
        except (ConnectorError, OSError, ValueError):
            gone = None
        if gone:
            removed.append(gone)
    return removed


def publish_debris_reap(*, now=None, limit: int = 100) -> int:
    """Reaper step: BUILDING versions whose writer is dead and whose run will not publish them again
    (the run stopped, or a manual publish was abandoned) lose their files and become FAILED."""
    from .choices import RunStatus

    now = now or timezone.now()
    done = 0
    active = TaskRun.objects.filter(status__in=RunStatus.active()).values_list("pk", flat=True)
    rows = DatasetVersion.objects.select_related("dataset", "dataset__source").filter(
        status=DatasetVersionStatus.BUILDING
    )
    for version in rows.order_by("created_at")[:limit]:
        engine_owned = (version.writer or "").startswith("batch:")
        if writer_alive(version, now) or (engine_owned and version.run_id in set(active)):
            continue  # the run's next publish attempt takes the row over (same number) and clears it then
        with transaction.atomic():
            locked = (
                DatasetVersion.objects.select_for_update()
                .filter(pk=version.pk, status=DatasetVersionStatus.BUILDING, writer=version.writer)
                .first()
            )
            if locked is None:
                continue
            removed = version_debris_clear(version)
            DatasetVersion.objects.filter(pk=version.pk).update(
                status=DatasetVersionStatus.FAILED,
                writer="",
                lineage={"error": "the publish attempt died", "writer": version.writer, "removed": removed},
            )
            done += 1
    return done


def _reserve(dataset: Dataset, run: TaskRun, writer: str, conn, template: str | None, fmt: str) -> DatasetVersion:
    """The run's version row for `writer`: a new BUILDING row, the run's BUILDING row taken over from a
    dead attempt (same number, its debris cleared), or the run's readable version (already published)."""
    live = [DatasetVersionStatus.BUILDING, *DatasetVersionStatus.readable()]
    for _attempt in range(5):
        try:
            with transaction.atomic():
                current = (
                    DatasetVersion.objects.select_for_update(of=("self",))
                    .select_related("dataset", "dataset__source")
                    .filter(run_id=run.pk, status__in=live)
                    .first()
                )
                if current is not None:
                    if current.status != DatasetVersionStatus.BUILDING:
                        return current
                    if current.writer != writer and writer_alive(current):
                        raise PublishBlocked(
                            _("Another publish of this run is in progress (%(writer)s).") % {"writer": current.writer},
                            retry_after=PUBLISH_WAIT_SECONDS if writer.startswith("batch:") else None,
                        )
                    version_debris_clear(current, conn)
                    current.writer = writer
                    current.save(update_fields=["writer"])
                    return current
                number = (DatasetVersion.objects.filter(dataset=dataset).aggregate(m=Max("version"))["m"] or 0) + 1
                return DatasetVersion.objects.create(
                    dataset=dataset,
                    version=number,
                    status=DatasetVersionStatus.BUILDING,
                    run_id=run.pk,
                    writer=writer,
                    location=version_location(dataset, template, number, run.pk, fmt),
                )
        except IntegrityError:
            continue  # another publish took the number (or the run's row) first
    raise PublishError(_("Could not reserve a version number for %(name)s.") % {"name": dataset.name})


def _remove_committed(conn, location: str) -> None:
    try:
        conn.remove_location(location)
    except (OSError, ValueError):
        pass


def publish_run(
    *,
    run: TaskRun,
    actor,
    override_reason: str | None = None,
    chunks=None,
    writer: str | None = None,
    fence=None,
    expected: tuple[str, int] | None = None,
    fenced_errors: tuple = (),
) -> DatasetVersion:
    """Publish a run's output as a new dataset version (QC accepted or an admin's audited override).

    At most one version per run: the run's BUILDING row names the one attempt (`writer`) that may flip
    it; `fence()` (the engine's batch fence) is checked in the transaction that flips it, and the file is
    renamed into place inside that transaction; `fenced_errors` are the caller's "lost the lease" errors,
    after which the row is left to whoever owns it now. `expected` is (stage key, records) the previous stage
    recorded as output: a publish that read anything else fails instead of shipping it.
    """
    try:
        return _publish_run(
            run=run,
            actor=actor,
            override_reason=override_reason,
            chunks=chunks,
            writer=writer,
            fence=fence,
            expected=expected,
            fenced_errors=fenced_errors,
        )
    finally:
        fault_point("done")


def _publish_run(*, run, actor, override_reason, chunks, writer, fence, expected, fenced_errors) -> DatasetVersion:
    from catalog.connectors import ConnectorError, get_connector

    from .engine import ReconcileError

    run = TaskRun.objects.select_related("pipeline", "template", "pipeline__output_dataset", "input_version").get(
        pk=run.pk
    )
    if run.output_version_id:
        existing = DatasetVersion.objects.get(pk=run.output_version_id)
        if existing.status in DatasetVersionStatus.readable():
            return existing  # idempotent: a redelivered publish step returns the version it made
    _check_qc(run, actor, override_reason)
    dataset, source, fmt, location_template, fields = publish_target(run)
    try:
        conn = get_connector(source)
    except ConnectorError as exc:
        raise PublishError(exc.message) from exc
    writer = writer or f"manual:{uuid.uuid4().hex}"
    version = _reserve(dataset, run, writer, conn, location_template, fmt)
    if version.status != DatasetVersionStatus.BUILDING:
        return version
    location = version.location
    fault_point("reserved")
    committed = None
    try:
        out = conn.open_writer(location, fmt, fields, staging_key=f"{_staging_prefix(version)}{writer}")
        try:
            _copy_records(chunks if chunks is not None else _output_chunks(run), out, fmt)
            finished = out.finish()
            fault_point("written")
            if expected is not None and int(finished.get("records", 0)) != expected[1]:
                raise ReconcileError(
                    _("Stage publish read %(read)s records but stage %(prev)s recorded %(expected)s as its output.")
                    % {"read": finished.get("records", 0), "prev": expected[0], "expected": expected[1]}
                )
            parents = (
                [run.input_version]
                if run.input_version_id
                else list(
                    DatasetVersion.objects.filter(
                        dataset_id=run.pipeline.input_dataset_id, status=DatasetVersionStatus.PUBLISHED
                    ).order_by("-version")[:1]
                )
                if run.pipeline.input_dataset_id
                else []
            )
            with transaction.atomic():
                if fence is not None and not fence():
                    raise PublishFenced()
                locked = (
                    DatasetVersion.objects.select_for_update(of=("self",))
                    .filter(pk=version.pk, status=DatasetVersionStatus.BUILDING, writer=writer)
                    .first()
                )
                if locked is None:
                    raise PublishFenced()
                before = audit_snapshot(version)
                version.status = DatasetVersionStatus.PUBLISHED
                version.writer = ""
                version.location = finished.get("location", location)
                version.checksum = finished["checksum"]
                version.record_count = int(finished.get("records", 0))
                version.size_bytes = int(finished.get("size_bytes", 0))
                version.template_version_id = run.template_id
                version.model_versions = _model_versions(run)
                version.qc_decision = _qc_summary(run)
                version.lineage = {
                    "run_id": str(run.pk),
                    "task_id": run.task_id,
                    "run_number": run.number,
                    "pipeline": {"id": run.pipeline_id, "name": run.pipeline.name},
                    "template": (
                        {"id": run.template_id, "name": run.template.name, "version": run.template.version}
                        if run.template_id
                        else None
                    ),
                    "source": {"id": source.pk, "name": source.name, "kind": source.kind},
                    "format": fmt,
                    "parents": [p.pk for p in parents],
                    "parameters": run.parameters or {},
                    **({"trigger": run.trigger} if run.trigger else {}),
                    # A backfill over a record range read only these records (1-based, inclusive) of its input.
                    **(
                        {"input_range": run.pipeline_snapshot["pipeline"]["input_range"]}
                        if (run.pipeline_snapshot or {}).get("pipeline", {}).get("input_range")
                        else {}
                    ),
                }
                version.published_at = timezone.now()
                version.full_clean()
                version.save()
                version.parents.set(parents)
                # Never overwrite a run's version once set: a second publish of the run changes nothing.
                if not TaskRun.objects.filter(pk=run.pk, output_version__isnull=True).update(output_version=version):
                    raise PublishFenced()
                run_event_record(run_id=run.pk, kind=RunEventKind.VERSION_PUBLISHED, version=version)
                audit_record(
                    actor=actor,
                    action=AuditAction.PUBLISH,
                    instance=version,
                    before=before,
                    after=audit_snapshot(version),
                    message=(
                        _("Published with QC override: %(reason)s") % {"reason": override_reason}
                        if override_reason
                        else _("Published from run %(run)s.") % {"run": run.pk}
                    ),
                )
                # Dataset triggers (schedules app) start downstream runs once the version is really there.
                version_id = version.pk
                transaction.on_commit(lambda: registry.version_published(version_id))
                # The rename is the last step before COMMIT: a kill between them leaves a file that the
                # BUILDING row names, and the next attempt or the reaper removes it.
                committed = out.commit()
                fault_point("renamed")
        except BaseException:
            out.abort()
            raise
    except (PublishFenced, *fenced_errors):
        raise  # not ours any more: the row is left to the attempt that owns it now (or the reaper)
    except BaseException as exc:
        if committed is not None:
            _remove_committed(conn, committed.get("location", location))
        DatasetVersion.objects.filter(pk=version.pk, status=DatasetVersionStatus.BUILDING, writer=writer).update(
            status=DatasetVersionStatus.FAILED, writer="", lineage={"error": f"{type(exc).__name__}: {exc}"[:2000]}
        )
        if isinstance(exc, ConnectorError):
            raise PublishError(exc.message) from exc
        raise
    fault_point("published")
    return version


# ---- Archive --------------------------------------------------------------------------------------
def _archive_target(version: DatasetVersion, src: Path) -> Path:
    project = version.dataset.project.slug
    return Path(settings.ARCHIVE_DIR) / project / version.dataset.name / f"v{version.version}" / src.name


def dataset_version_archive(*, version: DatasetVersion, actor) -> DatasetVersion:
    """Move a published version's file to the archive folder and mark it archived (lineage kept)."""
    from catalog.connectors import ConnectorError, get_connector

    with transaction.atomic():
        version = (
            DatasetVersion.objects.select_for_update(of=("self",))
            .select_related("dataset", "dataset__project", "dataset__source")
            .get(pk=version.pk)
        )
        if version.status == DatasetVersionStatus.ARCHIVED:
            return version
        if version.status != DatasetVersionStatus.PUBLISHED:
            raise ValidationError(
                {"status": _("Only a published version can be archived (this one is %(s)s).") % {"s": version.status}}
            )
        source = version.dataset.source
        archive_location = ""
        moved: tuple[Path, Path] | None = None
        if source is not None and version.location:
            conn = get_connector(source)
            path_of = getattr(conn, "path", None)
            if path_of is None:
                raise ValidationError(
                    {
                        "location": _("Versions in %(kind)s sources cannot be moved to the archive.")
                        % {"kind": source.kind}
                    }
                )
            try:
                src = Path(path_of(version.location))
            except ConnectorError as exc:
                raise ValidationError({"location": exc.message})
            if src.exists():
                dest = _archive_target(version, src)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(src), str(dest))
                moved = (src, dest)
                archive_location = str(dest)
        before = audit_snapshot(version)
        version.status = DatasetVersionStatus.ARCHIVED
        version.archive_location = archive_location
        version.archived_at = timezone.now()
        try:
            version.full_clean()
            version.save()
            audit_record(
                actor=actor, action=AuditAction.ARCHIVE, instance=version, before=before, after=audit_snapshot(version)
            )
        except BaseException:
            if moved is not None:
                # Put the file back so the row and the file keep telling the same story.
                os.makedirs(moved[0].parent, exist_ok=True)
                shutil.move(str(moved[1]), str(moved[0]))
            raise
    return version


__all__ = [
    "PublishBlocked",
    "PublishError",
    "PublishFenced",
    "publish_debris_reap",
    "version_debris_clear",
    "dataset_version_archive",
    "publish_run",
    "publish_target",
    "version_location",
]
