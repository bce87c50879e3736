"""The `file` connector: CSV, JSONL and Parquet below an allowed root, read streaming, written atomically.

Checkpoints: CSV/JSONL `{"offset": <byte offset after the chunk>, "record": <records consumed>}`;
Parquet `{"row_group": g, "row_offset": k, "record": n}`. Reading never holds more than one chunk.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
import uuid
from collections.abc import Iterator
from glob import escape as glob_escape
from pathlib import Path

from django.conf import settings
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from dataflare_portal.core import jsonl

from .base import ConnectionResult, Connector, ConnectorError, Writer, dataset_ref, infer_fields

FILE_FORMATS = ("csv", "jsonl", "parquet")
_READ_BLOCK = 1 << 20


def allowed_roots() -> list[Path]:
    return [Path(p).resolve() for p in settings.FILE_ROOTS]


def resolve_root(root: str) -> Path:
    """The configured root as an absolute path, which must lie below one of settings.FILE_ROOTS."""
    if not isinstance(root, str) or not root.strip() or "\x00" in root:
        raise ConnectorError(_("A root folder is required."), field="root")
    roots = allowed_roots()
    if not roots:
        raise ConnectorError(_("No file roots are configured (FILE_ROOTS)."), field="root")
    candidate = Path(root)
    if not candidate.is_absolute():
        candidate = roots[0] / candidate
    resolved = candidate.resolve()
    if not any(resolved == r or resolved.is_relative_to(r) for r in roots):
        raise ConnectorError(
            _("Root %(root)r is outside the allowed file roots (%(roots)s).")
            % {"root": root, "roots": ", ".join(str(r) for r in roots)},
            field="root",
        )
    return resolved


def resolve_location(root: Path, location: str) -> Path:
    """A dataset path below `root`; refuses `..`, absolute paths and symlinks that lead outside."""
    if not isinstance(location, str) or not location.strip() or "\x00" in location:
        raise ConnectorError(_("A file path is required."), field="location")
    target = (root / location).resolve()
    if target == root or not target.is_relative_to(root):
        raise ConnectorError(_("Path %(path)r escapes the data source root.") % {"path": location}, field="location")
    return target


class _LineReader:
    """Binary line iterator that knows the byte offset after the last line it handed out."""

    def __init__(self, fh, offset: int):
        self.fh = fh
        self.offset = offset

    def __iter__(self):
        return self

    def __next__(self) -> str:
        raw = self.fh.readline()
        if not raw:
            raise StopIteration
        self.offset += len(raw)
        return raw.decode("utf-8")


class FileConnector(Connector):
    kind = "file"
    label = gettext_lazy("Files (CSV, JSONL, Parquet)")
    formats = FILE_FORMATS
    sink_formats = FILE_FORMATS
    config_schema = {
        "type": "object",
        "properties": {
            "root": {
                "type": "string",
                "minLength": 1,
                "title": gettext_lazy("Folder"),
                "description": gettext_lazy("A folder below one of the allowed roots; datasets name files inside it."),
            }
        },
        "required": ["root"],
        "additionalProperties": False,
    }

    @property
    def root(self) -> Path:
        return resolve_root(self.config.get("root", ""))

    def path(self, location: str) -> Path:
        return resolve_location(self.root, location)

    def validate_config(self) -> None:
        resolve_root(self.config.get("root", ""))

    def validate_location(self, fmt: str, location: str) -> None:
        self.path(location)

    def discard_staged(self, location: str, staging_prefix: str = "") -> list[str]:
        """The hidden temp files of writers of `location` whose staging key starts with `staging_prefix`."""
        removed = []
        for tmp in staging_glob(self.path(location), staging_prefix):
            tmp.unlink(missing_ok=True)
            removed.append(str(tmp))
        return removed

    def remove_location(self, location: str) -> str | None:
        target = self.path(location)
        if not target.exists():
            return None
        target.unlink(missing_ok=True)
        return str(target)

    # ---- test ----
    def test_connection(self) -> ConnectionResult:
        started = time.perf_counter()
        try:
            root = self.root
        except ConnectorError as exc:
            return ConnectionResult(False, exc.message, 0.0)
        ms = lambda: (time.perf_counter() - started) * 1000  # noqa: E731
        if not root.is_dir():
            return ConnectionResult(False, _("Folder %(root)s does not exist.") % {"root": root}, ms())
        if not os.access(root, os.R_OK | os.X_OK):
            return ConnectionResult(False, _("Folder %(root)s is not readable.") % {"root": root}, ms())
        writable = os.access(root, os.W_OK)
        detail = _("Folder %(root)s is readable and writable.") if writable else _("Folder %(root)s is read-only.")
        return ConnectionResult(True, detail % {"root": root}, ms())

    def _source(self, dataset) -> tuple[Path, str, dict]:
        ref = dataset_ref(dataset)
        self.check_format(ref.format)
        path = self.path(ref.location)
        if not path.is_file():
            raise ConnectorError(_("File %(path)r does not exist.") % {"path": ref.location}, field="location")
        return path, ref.format, ref.options

    # ---- read ----
    def read(self, dataset, batch_size: int = 1000, start: dict | None = None) -> Iterator[tuple[list[dict], dict]]:
        path, fmt, options = self._source(dataset)
        batch_size = max(1, int(batch_size))
        stamp = _file_stamp(path)
        if start and start.get("file") not in (None, stamp):
            # Offsets into a file that was replaced or rewritten would land mid-record.
            raise ConnectorError(
                _("The file %(path)r changed since the checkpoint was taken; read it again from the start.")
                % {"path": dataset_ref(dataset).location},
                field="location",
            )
        if fmt == "jsonl":
            chunks = _read_jsonl(path, batch_size, start)
        elif fmt == "csv":
            chunks = _read_csv(path, batch_size, start, options)
        else:
            chunks = _read_parquet(path, batch_size, start)
        return ((records, {**checkpoint, "file": stamp}) for records, checkpoint in chunks)

    def seek_record(self, dataset, index: int) -> dict | None:
        """The checkpoint where record `index` (0-based) begins: JSONL by a scan for line ends, Parquet from
        the row groups' row counts.

        A JSONL record is the reader's (a non-blank line), so read(start=...) from it returns record
        `index` first. An input of fewer records gives {"past_end": True, ...}. CSV returns None (a quoted
        field may hold a newline): the engine reads up to the record instead, with the reader's own count.
        """
        path, fmt, _options = self._source(dataset)
        stamp = _file_stamp(path)
        if fmt == "parquet":
            import pyarrow.parquet as pq

            meta = pq.ParquetFile(path).metadata
            before = 0
            for group in range(meta.num_row_groups):
                rows = meta.row_group(group).num_rows
                if index < before + rows:
                    return {"row_group": group, "row_offset": index - before, "record": index, "file": stamp}
                before += rows
            if index == before:
                return {"row_group": meta.num_row_groups, "row_offset": 0, "record": index, "file": stamp}
            return {"record": before, "past_end": True}
        if fmt != "jsonl":
            return None
        offset = count = 0
        with path.open("rb") as fh:
            for raw in fh:
                if count == index:
                    break
                offset += len(raw)
                if raw.strip():
                    count += 1
        if count < index:
            return {"record": count, "past_end": True}
        return {"offset": offset, "record": index, "file": stamp}

    def can_plan_reads(self, dataset) -> bool:
        """Whether plan_reads can split this dataset (without scanning it): JSONL files."""
        return dataset_ref(dataset).format == "jsonl"

    def input_bytes(self, dataset) -> int | None:
        """The file's size in bytes (the engine sizes planned chunks by it)."""
        return self._source(dataset)[0].stat().st_size

    def plan_reads(
        self, dataset, batch_size: int = 1000, max_chunks: int | None = None, after: dict | None = None
    ) -> list[dict] | None:
        """JSONL only: a scan for line ends finds where every `batch_size`-th record ends.

        The rule for a record is the reader's (a non-blank line), so read(start=...) from each
        checkpoint returns exactly the planned chunk. CSV (quoted newlines) and Parquet are read in
        sequence instead. With `after` (the checkpoint where a first chunk that was already read ends)
        the plan covers the rest of the file and its first start is `after` itself (if a record follows).
        """
        path, fmt, _options = self._source(dataset)
        if fmt != "jsonl":
            return None
        batch_size = max(1, int(batch_size))
        stamp = _file_stamp(path)
        if after and after.get("file") not in (None, stamp):
            raise ConnectorError(
                _("The file %(path)r changed since the checkpoint was taken; read it again from the start.")
                % {"path": dataset_ref(dataset).location},
                field="location",
            )
        starts: list[dict] = []
        # Where the next chunk starts, once a record proves it is not empty.
        boundary = {"offset": int(after["offset"]), "record": int(after["record"]), "file": stamp} if after else None
        offset = int(after["offset"]) if after else 0
        records = int(after["record"]) if after else 0
        counted = 0  # records since the first planned start
        with path.open("rb") as fh:
            fh.seek(offset)
            for raw in fh:
                if raw.strip():
                    if boundary is not None:
                        if max_chunks is not None and len(starts) + 2 > max_chunks:
                            return None  # too many batches to create at once: read in a chain
                        starts.append(boundary)
                        boundary = None
                    records += 1
                    counted += 1
                    if counted % batch_size == 0:
                        boundary = {"offset": offset + len(raw), "record": records, "file": stamp}
                offset += len(raw)
        return starts

    def infer_schema(self, dataset, sample_size: int = 200) -> list[dict]:
        ref = dataset_ref(dataset)
        if ref.format == "parquet":
            import pyarrow.parquet as pq

            path, _fmt, _opts = self._source(ref)
            return _arrow_fields(pq.ParquetFile(path).schema_arrow)
        return infer_fields(self.preview(ref, limit=sample_size), from_text=ref.format == "csv")

    def count(self, dataset) -> int:
        path, fmt, options = self._source(dataset)
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows
        if fmt == "jsonl":
            with path.open("rb") as fh:
                return sum(1 for line in fh if line.strip())
        with path.open("r", encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh, **_csv_dialect(options))
            header = next(reader, None)
            if header is None:
                return 0
            return sum(1 for row in reader if row)

    # ---- write ----
    def open_writer(self, location: str, format: str, fields: list[str] | None = None, **options) -> Writer:
        self.check_format(format, sink=True)
        target = self.path(location)
        root = self.root
        if not target.parent.exists():
            # Create missing folders below the root only (resolve_location already proved containment).
            target.parent.mkdir(parents=True, exist_ok=True)
        if not target.parent.resolve().is_relative_to(root):
            raise ConnectorError(
                _("Path %(path)r escapes the data source root.") % {"path": location}, field="location"
            )
        return FileWriter(target, format, fields, location=location, options=options)


class LocalFile(FileConnector):
    """The file readers over one file the portal placed itself (a download, an upload being checked): no root."""

    def __init__(self, path: Path):
        super().__init__({})
        self._path = Path(path)

    def _source(self, dataset):
        ref = dataset_ref(dataset)
        self.check_format(ref.format)
        return self._path, ref.format, ref.options


def _file_stamp(path: Path) -> str:
    """Identity of the file's current contents: inode and modification time (an atomic replace changes both)."""
    st = path.stat()
    return f"{st.st_ino}:{st.st_mtime_ns}"


# ---- readers -----------------------------------------------------------------------------------
def _read_jsonl(path: Path, batch_size: int, start: dict | None):
    offset = int((start or {}).get("offset", 0))
    record_no = int((start or {}).get("record", 0))
    with path.open("rb") as fh:
        fh.seek(offset)
        lines: list[bytes] = []
        for raw in iter(fh.readline, b""):
            offset += len(raw)
            if not raw.strip():
                continue
            lines.append(raw)
            if len(lines) >= batch_size:
                yield _decode_jsonl(lines, record_no, offset), {"offset": offset, "record": record_no + len(lines)}
                record_no += len(lines)
                lines = []
        if lines:
            yield _decode_jsonl(lines, record_no, offset), {"offset": offset, "record": record_no + len(lines)}


def _decode_jsonl(lines: list[bytes], record_no: int, end: int) -> list[dict]:
    """A chunk's records in one decoder call; if that fails, line by line to name the bad record."""
    try:
        batch = jsonl.loads_lines(lines)
    except ValueError:
        batch = None
    if batch is None or len(batch) != len(lines):
        offset = end - sum(len(raw) for raw in lines)
        batch = []
        for n, raw in enumerate(lines, start=record_no + 1):
            try:
                batch.append(jsonl.loads(raw))
            except ValueError as exc:
                raise ConnectorError(
                    _("Record %(n)d (byte %(offset)d) is not valid JSON: %(error)s")
                    % {"n": n, "offset": offset, "error": exc}
                ) from None
            if not isinstance(batch[-1], dict):
                raise ConnectorError(_("Record %(n)d is not a JSON object.") % {"n": n})
            offset += len(raw)
    for n, record in enumerate(batch, start=record_no + 1):
        if not isinstance(record, dict):
            raise ConnectorError(_("Record %(n)d is not a JSON object.") % {"n": n})
    return batch


def _csv_dialect(options: dict) -> dict:
    out = {}
    if options.get("delimiter"):
        out["delimiter"] = options["delimiter"]
    if options.get("quotechar"):
        out["quotechar"] = options["quotechar"]
    return out


def _read_csv(path: Path, batch_size: int, start: dict | None, options: dict):
    dialect = _csv_dialect(options)
    with path.open("rb") as fh:
        lines = _LineReader(fh, 0)
        bom = fh.read(3)
        if bom == b"\xef\xbb\xbf":
            lines.offset = 3
        else:
            fh.seek(0)
        header = next(csv.reader(lines, **dialect), None)
        if header is None:
            return
        offset = int((start or {}).get("offset", 0)) or lines.offset
        record_no = int((start or {}).get("record", 0))
        fh.seek(offset)
        lines.offset = offset
        # csv.reader pulls lines only as it needs them (a quoted newline pulls the next one), so
        # lines.offset after each row is exactly the byte where the next row begins.
        reader = csv.reader(lines, **dialect)
        width = len(header)
        batch: list[dict] = []
        for row in reader:
            if not row:
                continue
            if len(row) < width:
                row = row + [""] * (width - len(row))
            batch.append(dict(zip(header, row, strict=False)))
            record_no += 1
            if len(batch) >= batch_size:
                yield batch, {"offset": lines.offset, "record": record_no}
                batch = []
        if batch:
            yield batch, {"offset": lines.offset, "record": record_no}


def _read_parquet(path: Path, batch_size: int, start: dict | None):
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    group = int((start or {}).get("row_group", 0))
    skip = int((start or {}).get("row_offset", 0))
    record_no = int((start or {}).get("record", 0))
    for g in range(group, pf.num_row_groups):
        skip_here = skip if g == group else 0
        position = 0
        group_rows = pf.metadata.row_group(g).num_rows
        for batch in pf.iter_batches(batch_size=batch_size, row_groups=[g]):
            # iter_batches restarts at the group's first row; drop what an earlier run already consumed.
            if skip_here:
                if batch.num_rows <= skip_here:
                    skip_here -= batch.num_rows
                    position += batch.num_rows
                    continue
                batch = batch.slice(skip_here)
                position += skip_here
                skip_here = 0
            records = batch.to_pylist()
            position += len(records)
            record_no += len(records)
            if position >= group_rows:
                checkpoint = {"row_group": g + 1, "row_offset": 0, "record": record_no}
            else:
                checkpoint = {"row_group": g, "row_offset": position, "record": record_no}
            yield records, checkpoint


def _arrow_fields(schema) -> list[dict]:
    import pyarrow as pa

    out = []
    for f in schema:
        t = f.type
        if pa.types.is_boolean(t):
            name = "bool"
        elif pa.types.is_integer(t):
            name = "int"
        elif pa.types.is_floating(t) or pa.types.is_decimal(t):
            name = "float"
        elif pa.types.is_nested(t):
            name = "json"
        else:
            name = "string"
        out.append({"name": f.name, "type": name, "nullable": f.nullable})
    return out


# ---- writer ------------------------------------------------------------------------------------
class _HashingFile(io.RawIOBase):
    """Write-through wrapper that hashes every byte on its way to disk."""

    def __init__(self, fh, digest):
        self.fh = fh
        self.digest = digest
        self.size = 0

    def writable(self):
        return True

    def write(self, data):
        self.digest.update(data)
        self.size += len(data)
        return self.fh.write(data)


class RecordEncoder:
    """Encodes records as JSONL, CSV or Parquet onto a binary sink (a file, a multipart upload).

    The one encoder behind every file-shaped writer, so a version reads the same wherever it was
    published. The field list is taken from the first records when none is given (`fields`).
    """

    PARQUET_ROW_GROUP = 50_000

    def __init__(self, sink, fmt: str, fields: list[str] | None):
        self.sink = sink
        self.format = fmt
        self.fields = list(fields) if fields else None
        self._text = None
        self._csv = None
        self._pq = None
        self._pq_schema = None
        self._pq_buffer: list[dict] = []

    def write(self, records: list[dict]) -> None:
        if not records:
            return
        if self.fields is None:
            self.fields = _fields_of(records)
        if self.format == "jsonl":
            self.sink.write(jsonl.dumps_lines(records))
        elif self.format == "csv":
            self._write_csv(records)
        else:
            self._pq_buffer.extend(records)
            if len(self._pq_buffer) >= self.PARQUET_ROW_GROUP:
                self._flush_parquet()

    def write_jsonl_bytes(self, data: bytes) -> None:
        """Append JSONL that is already encoded as write() would encode it (one record per line)."""
        if self.format != "jsonl":
            raise ConnectorError(_("Only a JSONL file takes encoded JSONL lines."))
        self.sink.write(data)

    def _write_csv(self, records):
        if self._csv is None:
            self._text = io.TextIOWrapper(self.sink, encoding="utf-8", newline="", write_through=True)
            self._csv = csv.writer(self._text, lineterminator="\n")
            self._csv.writerow(self.fields)
        rows = []
        for r in records:
            extra = set(r) - set(self.fields)
            if extra:
                raise ConnectorError(
                    _("Record has fields not in the CSV header: %(fields)s.") % {"fields": ", ".join(sorted(extra))}
                )
            rows.append([_csv_value(r.get(name)) for name in self.fields])
        self._csv.writerows(rows)

    def _flush_parquet(self):
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._pq_buffer:
            return
        rows = [{name: r.get(name) for name in self.fields} for r in self._pq_buffer]
        try:
            if self._pq_schema is None:
                table = pa.Table.from_pylist(rows)
                # An all-null first chunk would pin a column to type null; text is the safe choice.
                self._pq_schema = pa.schema(
                    [pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f for f in table.schema]
                )
                table = table.cast(self._pq_schema)
                self._pq = pq.ParquetWriter(self.sink, self._pq_schema)
            else:
                table = pa.Table.from_pylist(rows, schema=self._pq_schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise ConnectorError(_("Records do not fit the Parquet schema: %(error)s") % {"error": exc})
        self._pq.write_table(table)
        self._pq_buffer = []

    def close(self) -> None:
        """Write what the format keeps back (Parquet row groups and footer, a CSV header alone)."""
        if self.format == "parquet":
            self._flush_parquet()
            if self._pq is None:
                import pyarrow as pa
                import pyarrow.parquet as pq

                pq.ParquetWriter(self.sink, pa.schema([pa.field(f, pa.string()) for f in self.fields or []])).close()
            else:
                self._pq.close()
        elif self.format == "csv" and self._csv is None and self.fields:
            self._write_csv([])
        if self._text is not None:
            self._text.flush()


class FileWriter(Writer):
    """Writes to a hidden temp file beside the target; commit() fsyncs and renames it into place."""

    def __init__(self, target: Path, fmt: str, fields: list[str] | None, *, location: str, options: dict):
        super().__init__()
        self.target = target
        self.location = location
        self.format = fmt
        self.options = options
        # A staging key names the temp file after the attempt that writes it, so whoever cleans up after a
        # dead attempt finds it (staging_glob); without one the name is random.
        key = options.get("staging_key")
        self.tmp = target.parent / f".{target.name}.{_safe_key(key) if key else uuid.uuid4().hex}.tmp"
        self._fh = self.tmp.open("wb" if key else "xb")
        self._finished: dict | None = None
        self._out = _HashingFile(self._fh, self._hash)
        self._encoder = RecordEncoder(self._out, fmt, fields)

    @property
    def fields(self) -> list[str] | None:
        return self._encoder.fields

    def write(self, records: list[dict]) -> None:
        if self.closed:
            raise ConnectorError(_("The writer is already closed."))
        if not records:
            return
        self._encoder.write(records)
        self.records += len(records)

    def write_jsonl_bytes(self, data: bytes, records: int) -> None:
        """Append JSONL that is already encoded as write() would encode it (one record per line)."""
        if self.closed:
            raise ConnectorError(_("The writer is already closed."))
        self._encoder.write_jsonl_bytes(data)
        self.records += records

    def finish(self) -> dict:
        """Flush and fsync the temp file (still hidden); returns location, checksum, records and size."""
        if self.closed:
            raise ConnectorError(_("The writer is already closed."))
        if self._finished is not None:
            return self._finished
        try:
            self._encoder.close()
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
        except BaseException:
            self.abort()
            raise
        self._finished = {
            "location": self.location,
            "checksum": self._hash.hexdigest(),
            "records": self.records,
            "size_bytes": self._out.size,
        }
        return self._finished

    def commit(self) -> dict:
        """Rename the finished temp file into place (durably); nothing is visible before this."""
        result = self.finish()
        try:
            os.replace(self.tmp, self.target)
            _fsync_dir(self.target.parent)
        except BaseException:
            self.abort()
            raise
        self.closed = True
        return result

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._fh.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def _safe_key(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in str(key))[:120]


def staging_glob(target: Path, prefix: str = "") -> list[Path]:
    """The temp files of the writers of `target` whose staging key starts with `prefix` (live or dead)."""
    return sorted(target.parent.glob(f".{glob_escape(target.name)}.{glob_escape(_safe_key(prefix))}*.tmp"))


def _fields_of(records: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for r in records:
        for k in r:
            seen.setdefault(k, None)
    return list(seen)


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _fsync_dir(path: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
