"""Catalog services: every write and side effect on projects, data sources, datasets and versions."""

from __future__ import annotations

import itertools
import json
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max
from django.utils import timezone
from django.utils.translation import gettext as _

from dataflare_portal.core.models import AuditAction
from dataflare_portal.core.services import audit_record, audit_snapshot

from .choices import ConnectionStatus, DatasetVersionStatus
from .connectors import (
    ConnectionResult,
    ConnectorError,
    connector_class,
    connector_kinds,
    get_connector,
    secret_from_ciphertext,
    validate_config,
    validate_location,
    validate_secret,
)
from .models import Dataset, DatasetVersion, DataSource

PREVIEW_LIMIT_MAX = 200
DOWNLOAD_CHUNK_BYTES = 1 << 16


# ---- Validation --------------------------------------------------------------------------------
def datasource_config_validate(*, kind: str, config: Any) -> dict:
    """Validate a data source config for its kind; raises ValidationError naming the `config` field."""
    try:
        return validate_config(kind, config if config is not None else {})
    except ConnectorError as exc:
        field = "kind" if exc.field == "kind" else "config"
        prefix = "" if field == "kind" or not exc.field or exc.field == "config" else f"{exc.field}: "
        raise ValidationError({field: [f"{prefix}{exc.message}"]}) from None


def dataset_location_validate(*, dataset: Dataset) -> None:
    """Check the dataset's format fits its source's kind and its location is valid (below the root for files)."""
    if dataset.source_id is None:
        return
    try:
        validate_location(dataset.source.kind, dataset.source.config, dataset.format, dataset.location)
    except ConnectorError as exc:
        raise ValidationError({exc.field if exc.field in ("format", "location") else "source": [exc.message]})


# ---- Data sources ------------------------------------------------------------------------------
def _secret_ciphertext(secret: dict | str | None, kind: str | None = None) -> str:
    from dataflare_portal.core.secrets import encrypt_secret

    if isinstance(secret, str):
        secret = {"password": secret}
    if kind and secret:
        try:
            validate_secret(kind, secret)
        except ConnectorError as exc:
            # Names the credential, never echoes its value.
            raise ValidationError({exc.field or "secret": [exc.message]}) from None
    secret = {k: v for k, v in (secret or {}).items() if v not in (None, "")}
    return encrypt_secret(json.dumps(secret)) if secret else ""


def datasource_create(
    *, actor, project, name: str, kind: str, config: dict, secret: dict | str | None = None, description: str = ""
) -> DataSource:
    """Create a data source with a validated config; credentials are encrypted before they touch the row."""
    source = DataSource(project=project, name=name, kind=kind, config=config or {}, description=description)
    if kind in connector_kinds():
        source.secret_ciphertext = _secret_ciphertext(secret, kind)
    else:
        source.secret_ciphertext = _secret_ciphertext(secret)  # full_clean() reports the unknown kind
    source.full_clean()
    with transaction.atomic():
        source.save()
        audit_record(actor=actor, action=AuditAction.CREATE, instance=source, after=audit_snapshot(source))
    return source


_UNSET = object()


def datasource_update(
    *, actor, source: DataSource, secret: Any = _UNSET, secret_merge: bool = False, **fields
) -> DataSource:
    """Change a data source; `secret` replaces the credentials (None or {} clears them), absent keeps them.

    With `secret_merge`, the given credentials replace only those names and the other stored ones stay
    (the admin's blank inputs keep what is stored).
    """
    allowed = {"project", "name", "kind", "config", "description"}
    unknown = set(fields) - allowed
    if unknown:
        raise TypeError(f"datasource_update() got unexpected fields {sorted(unknown)}")
    before = audit_snapshot(DataSource.objects.get(pk=source.pk))
    for key, value in fields.items():
        setattr(source, key, value)
    secret_changed = secret is not _UNSET
    if secret_changed:
        if secret_merge and secret:
            stored = secret_from_ciphertext(source.secret_ciphertext)
            names = set(connector_class(source.kind).secret_fields) if source.kind in connector_kinds() else set()
            secret = {**{k: v for k, v in stored.items() if k in names}, **secret}
        kind = source.kind if source.kind in connector_kinds() else None
        source.secret_ciphertext = _secret_ciphertext(secret, kind)
    source.full_clean()
    with transaction.atomic():
        source.save()
        audit_record(
            actor=actor,
            action=AuditAction.UPDATE,
            instance=source,
            before=before,
            after=audit_snapshot(source),
            message=_("Credentials replaced.") if secret_changed else "",
        )
    return source


def datasource_test_connection(*, actor, source: DataSource) -> ConnectionResult:
    """Try the source's connection; record status, time and error on the row and in the audit log."""
    try:
        result = get_connector(source).test_connection()
    except (ConnectorError, ValueError) as exc:
        result = ConnectionResult(False, str(exc), 0.0)
    source.status = ConnectionStatus.OK if result.ok else ConnectionStatus.ERROR
    source.last_checked_at = timezone.now()
    source.last_error = "" if result.ok else result.detail[:2000]
    with transaction.atomic():
        DataSource.objects.filter(pk=source.pk).update(
            status=source.status, last_checked_at=source.last_checked_at, last_error=source.last_error
        )
        audit_record(
            actor=actor,
            action=AuditAction.RUN,
            instance=source,
            message=_("Connection test: %(result)s (%(ms).0f ms) %(detail)s")
            % {"result": "ok" if result.ok else "failed", "ms": result.latency_ms, "detail": result.detail},
        )
    return result


# ---- Datasets ----------------------------------------------------------------------------------
def _connector_for(dataset: Dataset):
    if dataset.source_id is None:
        raise ConnectorError(_("The dataset has no data source."), field="source")
    return get_connector(dataset.source)


def dataset_preview(*, dataset: Dataset, limit: int = 20) -> list[dict]:
    """The first `limit` records of a dataset, read through its connector (no write, no audit).

    An output dataset's location is where its versions are written (a folder or a name), not a
    file: it previews its latest published version instead.
    """
    limit = max(1, min(int(limit), PREVIEW_LIMIT_MAX))
    latest = (
        DatasetVersion.objects.filter(dataset=dataset, status=DatasetVersionStatus.PUBLISHED)
        .order_by("-version")
        .first()
    )
    if latest is not None:
        return dataset_version_preview(version=latest, limit=limit)
    return _connector_for(dataset).preview(dataset, limit=limit)


_FORMAT_BY_SUFFIX = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}


def _version_as_dataset(version: DatasetVersion) -> Dataset:
    """An unsaved stand-in Dataset whose location is the version's file, for connector reads."""
    dataset = version.dataset
    location = version.location if version.status != DatasetVersionStatus.ARCHIVED else version.archive_location
    if not location:
        raise ConnectorError(_("This version has no stored data."), field="location")
    suffix = "." + location.rsplit(".", 1)[-1].lower() if "." in location.rsplit("/", 1)[-1] else ""
    fmt = (version.lineage or {}).get("format") or _FORMAT_BY_SUFFIX.get(suffix) or dataset.format
    return Dataset(
        pk=dataset.pk,
        project_id=dataset.project_id,
        source=dataset.source,
        name=dataset.name,
        format=fmt,
        location=location,
        options=dataset.options,
    )


def dataset_version_preview(*, version: DatasetVersion, limit: int = 20) -> list[dict]:
    """The first `limit` records of one version, read through its dataset's connector."""
    limit = max(1, min(int(limit), PREVIEW_LIMIT_MAX))
    stand_in = _version_as_dataset(version)
    return _connector_for(stand_in).preview(stand_in, limit=limit)


def dataset_version_download(*, version: DatasetVersion, actor) -> tuple[Any, str, int | None]:
    """Open a version for download, audited: (an iterator of byte chunks, a file name, its size or None).

    A file-backed version streams its stored bytes (the checksum matches); any other sink streams
    its records as JSON lines, read batch by batch — never the whole version in memory.
    """
    stand_in = _version_as_dataset(version)
    conn = _connector_for(stand_in)
    base = f"{version.dataset.name}-v{version.version}"
    if hasattr(conn, "path"):
        path = conn.path(stand_in.location)
        if not path.is_file():
            raise ConnectorError(_("The file of this version is missing: %(path)s") % {"path": stand_in.location})
        name = f"{base}{path.suffix}"
        size = path.stat().st_size

        def chunks():
            with open(path, "rb") as handle:
                while block := handle.read(DOWNLOAD_CHUNK_BYTES):
                    yield block

        stream = chunks()
    elif hasattr(conn, "iter_bytes"):
        # Object storage: the stored object's bytes, streamed (the checksum matches them too).
        stream, size = conn.iter_bytes(stand_in.location)
        suffix = stand_in.location.rsplit("/", 1)[-1]
        name = f"{base}.{suffix.rsplit('.', 1)[-1]}" if "." in suffix else base
    else:
        name, size = f"{base}.jsonl", None
        batches = conn.read(stand_in, batch_size=1000)
        # Read the first batch now, so an unreachable sink is an error here and not a broken download.
        first = next(batches, None)

        def lines():
            for records, _checkpoint in itertools.chain([first], batches) if first is not None else ():
                yield "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records).encode()

        stream = lines()
    audit_record(
        actor=actor,
        action=AuditAction.EXPORT,
        instance=version,
        message=_("Downloaded %(name)s.") % {"name": name},
    )
    return stream, name, size


def dataset_profile(*, actor, dataset: Dataset, sample_size: int = 200, preview_limit: int = 20) -> dict:
    """Infer schema and count rows (streaming) and store them on the dataset; returns them with a preview."""
    conn = _connector_for(dataset)
    schema = conn.infer_schema(dataset, sample_size=sample_size)
    row_count = conn.count(dataset)
    preview = conn.preview(dataset, limit=max(1, min(preview_limit, PREVIEW_LIMIT_MAX)))
    before = audit_snapshot(dataset)
    dataset.schema = schema
    dataset.row_count = row_count
    dataset.profiled_at = timezone.now()
    with transaction.atomic():
        Dataset.objects.filter(pk=dataset.pk).update(
            schema=schema, row_count=row_count, profiled_at=dataset.profiled_at
        )
        audit_record(
            actor=actor,
            action=AuditAction.RUN,
            instance=dataset,
            before={k: before[k] for k in ("schema", "row_count", "profiled_at")},
            after={"schema": schema, "row_count": row_count, "profiled_at": dataset.profiled_at},
            message=_("Profiled: %(rows)d rows, %(fields)d fields.") % {"rows": row_count, "fields": len(schema)},
        )
    return {"schema": schema, "row_count": row_count, "profiled_at": dataset.profiled_at, "preview": preview}


# ---- Dataset versions --------------------------------------------------------------------------
def dataset_version_next_number(dataset: Dataset) -> int:
    """The next version number of a dataset (callers create the row in the same transaction, after a lock)."""
    current = DatasetVersion.objects.filter(dataset=dataset).aggregate(top=Max("version"))["top"]
    return (current or 0) + 1


def dataset_lock(*, dataset: Dataset) -> Dataset:
    """Lock the dataset row for the current transaction, so two publishers cannot take the same number."""
    return Dataset.objects.select_for_update().get(pk=dataset.pk)


# ---- Version diff ------------------------------------------------------------------------------
def dataset_version_diff(*, left: DatasetVersion, right: DatasetVersion, key: str | None = None, sample: int = 5):
    """Compare two versions by a key field (default: the dataset's `options.key`): counts and samples of
    added, removed and changed records, streamed through the connectors in bounded memory (catalog.diff)."""
    from .diff import diff_versions

    key = (key or "").strip() or (left.dataset.options or {}).get("key") or ""
    if not key:
        raise ConnectorError(_("Name the key field that identifies a record in both versions."), field="key")
    readable = DatasetVersionStatus.readable()
    for side, version in (("left", left), ("against", right)):
        if version.status not in readable:
            raise ConnectorError(
                _("Version %(version)s is %(status)s; only published or archived versions can be compared.")
                % {"version": version, "status": version.get_status_display()},
                field=side if side == "against" else "version",
            )
    chunks = []
    for version in (left, right):
        stand_in = _version_as_dataset(version)
        chunks.append(_connector_for(stand_in).read(stand_in, batch_size=5000))
    result = diff_versions(chunks[0], chunks[1], key=key, sample=sample, labels=(str(left), str(right)))
    result.update({"left": left.pk, "right": right.pk})
    return result


# ---- Uploads -----------------------------------------------------------------------------------
def dataset_upload(
    *,
    actor,
    source: DataSource,
    name: str,
    location: str,
    chunks,
    description: str = "",
    options: dict | None = None,
) -> DatasetVersion:
    """Stream an uploaded file into a files source and register it as a new dataset with its version 1.

    Checked before a byte is written (source kind, dataset name, file name against the path guards, no
    overwrite); streamed to a hidden temp file with the size limit and sha256; the first record read to
    prove the format; linked into place; then the dataset and its published version are created in one
    transaction. Any failure leaves neither a file nor a row. Raises ValidationError naming the field.
    """
    from . import uploads

    def refuse(exc: ConnectorError, default: str = "file"):
        return ValidationError({exc.field if exc.field in ("location", "file", "name") else default: [exc.message]})

    if source.kind != "file":
        raise ValidationError(
            {
                "source": [
                    _("Files can be uploaded into a files data source only (this one is %(kind)s).")
                    % {"kind": source.kind}
                ]
            }  # fmt: skip
        )
    location = (location or "").strip()
    try:
        fmt = uploads.upload_format(location)
        conn = get_connector(source)
        target = uploads.upload_target(conn, location)
    except ConnectorError as exc:
        raise refuse(exc, "location") from None
    dataset = Dataset(
        project=source.project,
        source=source,
        name=name,
        description=description,
        format=fmt,
        location=location,
        options=dict(options or {}),
    )
    if Dataset.objects.filter(project=source.project, name=name).exists():
        raise ValidationError({"name": [_("A dataset with this name already exists in the project.")]})
    dataset.full_clean()
    try:
        tmp, checksum, size = uploads.upload_stream(target, chunks, limit=uploads.upload_max_bytes())
    except ConnectorError as exc:
        raise refuse(exc) from None
    try:
        records = uploads.upload_sniff(tmp, fmt, dataset.options)
        uploads.upload_place(tmp, target)
    except ConnectorError as exc:
        tmp.unlink(missing_ok=True)
        raise refuse(exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        with transaction.atomic():
            dataset.row_count = records
            dataset.save()
            version = DatasetVersion(
                dataset=dataset,
                version=1,
                status=DatasetVersionStatus.PUBLISHED,
                location=location,
                checksum=checksum,
                record_count=records,
                size_bytes=size,
                published_at=timezone.now(),
                lineage={
                    "format": fmt,
                    "source": {"id": source.pk, "kind": source.kind},
                    "upload": {"sha256": checksum},
                },
            )
            version.full_clean()
            version.save()
            audit_record(actor=actor, action=AuditAction.CREATE, instance=dataset, after=audit_snapshot(dataset))
            audit_record(
                actor=actor,
                action=AuditAction.CREATE,
                instance=version,
                message=_("Uploaded %(path)s: %(size)d bytes, %(records)d records, sha256 %(sha)s.")
                % {"path": location, "size": size, "records": records, "sha": checksum},
            )
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return version
