"""Uploads into a files data source: the name checks, the streamed copy (size limit, sha256) and the format check.

The service (services.dataset_upload) calls these in order: `upload_target` before a byte is written,
`upload_stream` into a hidden temp file beside the target, `upload_sniff` on the temp file, then links it
into place without overwriting. Every failure removes the temp file: nothing half-written stays behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

from django.conf import settings
from django.utils.translation import gettext as _

from .connectors import ConnectorError, DatasetRef
from .connectors.files import FileConnector, LocalFile

UPLOAD_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}


def upload_max_bytes() -> int:
    return int(settings.DATASET_UPLOAD_MAX_BYTES)


def upload_format(name: str) -> str:
    """The format a file name's extension names; refuses any other extension."""
    suffix = Path(name).suffix.lower()
    if suffix not in UPLOAD_FORMATS:
        raise ConnectorError(
            _("%(name)r is not a .jsonl, .csv or .parquet file.") % {"name": name[:200]}, field="location"
        )
    return UPLOAD_FORMATS[suffix]


def upload_target(conn: FileConnector, location: str) -> Path:
    """Where an upload to `location` goes: below the root (path guards), no hidden part, not existing yet."""
    if not isinstance(location, str) or not location.strip():
        raise ConnectorError(_("Name the file to upload."), field="location")
    if any(ord(c) < 32 or ord(c) == 127 for c in location) or "\\" in location or len(location) > 500:
        raise ConnectorError(
            _("%(path)r contains backslashes or control characters, or is too long.") % {"path": location[:200]},
            field="location",
        )
    parts = location.split("/")
    if location.startswith("/") or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        raise ConnectorError(
            _("%(path)r must be a relative path below the data source's folder, without '..' or hidden names.")
            % {"path": location[:200]},
            field="location",
        )
    target = conn.path(location)  # the root's own guard: symlinks that lead outside are refused too
    if target.exists() or target.is_symlink():
        raise ConnectorError(
            _("%(path)s already exists; an upload never replaces a file.") % {"path": location}, field="location"
        )
    return target


def upload_stream(target: Path, chunks: Iterable[bytes], *, limit: int) -> tuple[Path, str, int]:
    """Copy chunks to a hidden temp file beside `target`: (temp path, sha256, size); removed again on any error."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.upload-{uuid.uuid4().hex}.tmp"
    digest = hashlib.sha256()
    size = 0
    try:
        with tmp.open("xb") as fh:
            for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise ConnectorError(
                        _("The file is larger than the upload limit of %(limit)s bytes.") % {"limit": f"{limit:,}"},
                        field="file",
                    )
                digest.update(chunk)
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if size == 0:
        tmp.unlink(missing_ok=True)
        raise ConnectorError(_("The file is empty."), field="file")
    return tmp, digest.hexdigest(), size


def upload_sniff(path: Path, fmt: str, options: dict | None = None) -> int:
    """Check the file is what its name says by reading its first record; returns the record count."""
    with path.open("rb") as fh:
        head = fh.read(4096)
    if fmt != "parquet" and head.startswith(b"PAR1"):
        raise ConnectorError(_("The file is Parquet, not %(format)s.") % {"format": fmt.upper()}, field="file")
    if fmt != "parquet":
        try:
            head.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            if exc.start < len(head) - 4:  # a multi-byte character cut at the end of the sample is fine
                raise ConnectorError(_("The file is not UTF-8 text."), field="file") from None
    if fmt == "csv":
        first = head.lstrip(b"\xef\xbb\xbf").split(b"\n", 1)[0].strip()
        if first.startswith(b"{"):
            try:
                json.loads(first)
            except ValueError:
                pass
            else:
                raise ConnectorError(_("The file is JSONL, not CSV (its first line is a JSON object)."), field="file")
    reader = LocalFile(path)
    ref = DatasetRef(str(path.name), fmt, dict(options or {}))
    try:
        first_chunk = next(iter(reader.read(ref, batch_size=1)), None)
    except ConnectorError as exc:
        raise ConnectorError(
            _("The file is not valid %(format)s: %(error)s") % {"format": fmt.upper(), "error": exc.message},
            field="file",
        ) from None
    except (ValueError, OSError) as exc:  # pyarrow's errors are ValueErrors/OSErrors
        raise ConnectorError(
            _("The file is not valid %(format)s: %(error)s")
            % {"format": fmt.upper(), "error": str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__},
            field="file",
        ) from None
    if first_chunk is None or not first_chunk[0]:
        raise ConnectorError(_("The file holds no record."), field="file")
    if fmt == "csv" and len(first_chunk[0][0]) < 1:
        raise ConnectorError(_("The CSV file has no header."), field="file")
    try:
        return reader.count(ref)
    except (ConnectorError, ValueError, OSError) as exc:
        raise ConnectorError(
            _("The file is not valid %(format)s: %(error)s")
            % {"format": fmt.upper(), "error": getattr(exc, "message", None) or str(exc).splitlines()[0][:300]},
            field="file",
        ) from None


def upload_place(tmp: Path, target: Path) -> None:
    """Link the checked temp file to its name (fails if the name was taken meanwhile), then drop the temp name."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise ConnectorError(
            _("%(path)s already exists; an upload never replaces a file.") % {"path": target.name}, field="location"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
