"""The `s3` connector: CSV, JSONL and Parquet objects (or every object below a prefix) in S3-compatible storage.

Reading streams: JSONL and CSV through one ranged GET per read, consumed a megabyte at a time, so a
checkpoint is a byte offset into an object and a resume is a GET from there (`If-Match` on the ETag the
checkpoint recorded, so a replaced object is refused rather than read from the middle of a record).
Parquet goes through a seekable file whose reads are ranged GETs: pyarrow fetches the footer, then one
row group's column chunks at a time. A dataset location ending in `/` is a prefix: its objects are read
in key order, the checkpoint naming the object and the position in it.

Writing is a multipart upload to the target key: parts are uploaded as the buffer fills, and the object
exists only once `commit()` completes the upload. `abort()` aborts it; an upload left behind by a killed
attempt is aborted by `discard_staged()`, which the publish cleanup (next attempt or reaper) calls.

Every client is built after the SSRF guard approved the endpoint, and dials the approved address (the
host name stays for TLS and the Host header), so a DNS answer that changes later cannot redirect it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from dataflare_portal.core.netguard import EndpointRefused, EndpointUnresolvable, approve

from .base import ConnectionResult, Connector, ConnectorError, Writer, dataset_ref, infer_fields
from .files import FILE_FORMATS, RecordEncoder, _arrow_fields, _csv_dialect, _decode_jsonl

_READ_BLOCK = 1 << 20
_BUCKET = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
_MIN_PART = 5 * 1024 * 1024  # S3's smallest part (all but the last)
_CONTENT_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv", "parquet": "application/vnd.apache.parquet"}


def check_key(key: str, *, field: str) -> str:
    """A relative object key (or prefix): no `..`/`.` segments, no leading `/`, no `//`, `\\` or control characters."""
    if not isinstance(key, str):
        raise ConnectorError(_("The key must be text."), field=field)
    if key.startswith("/") or "\\" in key or any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise ConnectorError(
            _("%(key)r is not a relative object key (no leading /, backslash or control characters).") % {"key": key},
            field=field,
        )
    parts = key.split("/")
    inner = parts[:-1] if key.endswith("/") else parts
    if any(p in ("", ".", "..") for p in inner if key):
        raise ConnectorError(_("%(key)r has an empty, '.' or '..' segment.") % {"key": key}, field=field)
    if len(key.encode("utf-8")) > 900:
        raise ConnectorError(_("The key is too long (at most 900 bytes)."), field=field)
    return key


def check_endpoint_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) endpoint URL; refuses user info, paths, queries and other schemes."""
    text = (url or "").strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ConnectorError(_("%(url)r is not a valid URL.") % {"url": url}, field="endpoint") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConnectorError(
            _("The endpoint must be an http:// or https:// URL with a host, e.g. https://s3.example.com."),
            field="endpoint",
        )
    if parts.username is not None or parts.password is not None:
        raise ConnectorError(_("The endpoint must not carry a user name or password."), field="endpoint")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConnectorError(_("The endpoint is a bare URL: no path, query or fragment."), field="endpoint")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _pinned_pool(pool_cls, address: str):
    """A urllib3 pool class whose connections dial `address` while keeping the host name for TLS and Host."""
    base = pool_cls.ConnectionCls

    class PinnedConnection(base):
        def _new_conn(self):
            name = self._dns_host
            self._dns_host = address
            try:
                return super()._new_conn()
            finally:
                self._dns_host = name

    return type(f"Pinned{pool_cls.__name__}", (pool_cls,), {"ConnectionCls": PinnedConnection})


class S3Connector(Connector):
    kind = "s3"
    label = gettext_lazy("Object storage (S3-compatible)")
    formats = FILE_FORMATS
    sink_formats = FILE_FORMATS
    secret_fields = ("access_key_id", "secret_access_key")
    secret_labels = {
        "access_key_id": gettext_lazy("Access key ID"),
        "secret_access_key": gettext_lazy("Secret access key"),
    }
    config_schema = {
        "type": "object",
        "properties": {
            "endpoint": {
                "type": "string",
                "minLength": 1,
                "maxLength": 300,
                "title": gettext_lazy("Endpoint"),
                "description": gettext_lazy(
                    "http(s) URL of the S3 API, e.g. https://s3.eu-west-1.amazonaws.com or http://minio:9000."
                ),
            },
            "bucket": {"type": "string", "pattern": _BUCKET, "title": gettext_lazy("Bucket")},
            "prefix": {
                "type": "string",
                "default": "",
                "maxLength": 500,
                "title": gettext_lazy("Prefix"),
                "description": gettext_lazy("Dataset locations are keys below this prefix (e.g. raw/)."),
            },
            "region": {"type": "string", "default": "us-east-1", "maxLength": 40, "title": gettext_lazy("Region")},
            "verify_tls": {"type": "boolean", "default": True, "title": gettext_lazy("Verify TLS certificates")},
            "connect_timeout": {
                "type": "integer",
                "minimum": 1,
                "maximum": 60,
                "default": 5,
                "title": gettext_lazy("Connect timeout (s)"),
            },
            "read_timeout": {
                "type": "integer",
                "minimum": 1,
                "maximum": 600,
                "default": 60,
                "title": gettext_lazy("Read timeout (s)"),
            },
            "part_size_mb": {
                "type": "integer",
                "minimum": 5,
                "maximum": 512,
                "default": 8,
                "title": gettext_lazy("Upload part size (MB)"),
            },
        },
        "required": ["endpoint", "bucket"],
        "additionalProperties": False,
    }

    def validate_config(self) -> None:
        """Endpoint shape and prefix now; an IP literal endpoint is checked now, a name at every connect."""
        scheme, host, port = check_endpoint_url(self.config.get("endpoint", ""))
        prefix = self.config.get("prefix", "")
        if prefix:
            check_key(prefix if prefix.endswith("/") else prefix + "/", field="prefix")
        # A name that does not resolve now may later (DNS trouble); a refused address is refused now.
        self._approve(host, port, unresolvable_ok=True)

    def validate_location(self, fmt: str, location: str) -> None:
        self.key(location)

    # ---- keys ----
    def key(self, location: str) -> str:
        """The full object key (prefix + location) of a dataset location, traversal refused."""
        if not isinstance(location, str) or not location.strip():
            raise ConnectorError(_("An object key is required."), field="location")
        check_key(location, field="location")
        prefix = self.config.get("prefix", "") or ""
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return prefix + location

    # ---- client ----
    def _approve(self, host: str, port: int, *, unresolvable_ok: bool = False):
        try:
            return approve(host, port, field="endpoint")
        except EndpointUnresolvable as exc:
            if unresolvable_ok:
                return None
            raise ConnectorError(str(exc), field="endpoint") from None
        except EndpointRefused as exc:
            raise ConnectorError(str(exc), field="endpoint") from None

    def client(self):
        """A boto3 S3 client for the approved endpoint address (path-style, our credentials or unsigned)."""
        import boto3
        import botocore
        from botocore.awsrequest import AWSHTTPConnectionPool, AWSHTTPSConnectionPool
        from botocore.config import Config

        if getattr(self, "_client", None) is not None:
            return self._client
        scheme, host, port = check_endpoint_url(self.config.get("endpoint", ""))
        approved = self._approve(host, port)
        access = self.secret.get("access_key_id")
        secret = self.secret.get("secret_access_key")
        config = Config(
            region_name=self.config.get("region") or "us-east-1",
            # Path-style: the bucket never becomes a host name of its own, so only the approved host is dialed.
            s3={"addressing_style": "path"},
            connect_timeout=int(self.config.get("connect_timeout", 5)),
            read_timeout=int(self.config.get("read_timeout", 60)),
            retries={"max_attempts": 3, "mode": "standard"},
            # No credentials configured: unsigned requests, never the environment's or an instance profile's.
            signature_version=None if access and secret else botocore.UNSIGNED,
            proxies={},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        if bool(access) != bool(secret):
            field = "secret_access_key" if access else "access_key_id"
            raise ConnectorError(_("Enter both the access key ID and the secret access key, or neither."), field=field)
        # Explicit keys or UNSIGNED: botocore never walks its credential chain (environment, files, instance
        # metadata), and proxies={} keeps it off the environment's proxies, so only the approved address is dialed.
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=f"{scheme}://{approved.authority}",
            config=config,
            verify=bool(self.config.get("verify_tls", True)),
            aws_access_key_id=access or None,
            aws_secret_access_key=secret or None,
        )
        try:
            manager = client._endpoint.http_session._manager
        except AttributeError:  # fail closed if botocore ever moves it: never dial by name
            raise ConnectorError(_("This boto3 version cannot pin the endpoint address."), field="endpoint") from None
        manager.pool_classes_by_scheme = {
            "http": _pinned_pool(AWSHTTPConnectionPool, approved.address),
            "https": _pinned_pool(AWSHTTPSConnectionPool, approved.address),
        }
        self._client = client
        return client

    def _call(self, what: str, fn, *args, field: str | None = "location", **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            message = exc.response.get("Error", {}).get("Message", "") or code
            if code in ("PreconditionFailed", "412"):
                raise ConnectorError(
                    _("The object changed since the checkpoint was taken; read it again from the start."),
                    field="location",
                ) from None
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ConnectorError(_("%(what)s: the object does not exist.") % {"what": what}, field=field) from None
            if code == "NoSuchBucket":
                raise ConnectorError(
                    _("The bucket %(bucket)s does not exist.") % {"bucket": self.config.get("bucket")}, field="bucket"
                ) from None
            raise ConnectorError(
                _("%(what)s failed: %(code)s %(message)s") % {"what": what, "code": code, "message": message},
                field=field,
            ) from None
        except BotoCoreError as exc:
            raise ConnectorError(
                _("%(what)s failed: %(error)s") % {"what": what, "error": _clean(exc)}, field="endpoint"
            ) from None

    def test_connection(self) -> ConnectionResult:
        started = time.perf_counter()
        ms = lambda: (time.perf_counter() - started) * 1000  # noqa: E731
        try:
            client = self.client()
            self._call(_("Listing the bucket"), client.list_objects_v2, Bucket=self.config["bucket"], MaxKeys=1,
                       Prefix=self.config.get("prefix", "") or "", field="bucket")  # fmt: skip
        except ConnectorError as exc:
            return ConnectionResult(False, exc.message, ms())
        return ConnectionResult(
            True, _("Bucket %(bucket)s is reachable and listable.") % {"bucket": self.config["bucket"]}, ms()
        )

    # ---- objects ----
    def _objects(self, ref) -> list[dict]:
        """[{key, size, etag}] of the dataset: one object, or every object below a prefix (key order)."""
        key = self.key(ref.location)
        client = self.client()
        bucket = self.config["bucket"]
        if not key.endswith("/"):
            head = self._call(_("Reading %(key)s") % {"key": ref.location}, client.head_object, Bucket=bucket, Key=key)
            return [{"key": key, "size": int(head["ContentLength"]), "etag": head.get("ETag", "")}]
        out = []
        token = None
        while True:
            kwargs = {"Bucket": bucket, "Prefix": key}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call(_("Listing %(prefix)s") % {"prefix": ref.location}, client.list_objects_v2, **kwargs)
            for item in page.get("Contents", []):
                name = item["Key"]
                if name.endswith("/") or name.rsplit("/", 1)[-1].startswith("."):
                    continue  # folder markers and hidden objects are not data
                out.append({"key": name, "size": int(item["Size"]), "etag": item.get("ETag", "")})
            if not page.get("IsTruncated"):
                break
            token = page.get("NextContinuationToken")
        return sorted(out, key=lambda o: o["key"])

    def _body(self, obj: dict, start: int = 0):
        kwargs = {"Bucket": self.config["bucket"], "Key": obj["key"], "IfMatch": obj["etag"]}
        if start:
            kwargs["Range"] = f"bytes={start}-"
        return self._call(_("Reading %(key)s") % {"key": obj["key"]}, self.client().get_object, **kwargs)["Body"]

    # ---- read ----
    def read(self, dataset, batch_size: int = 1000, start: dict | None = None) -> Iterator[tuple[list[dict], dict]]:
        ref = dataset_ref(dataset)
        self.check_format(ref.format)
        batch_size = max(1, int(batch_size))
        objects = self._objects(ref)
        return self._read(ref, objects, batch_size, dict(start or {}))

    def _read(self, ref, objects, batch_size, start):
        record_no = int(start.get("record", 0))
        begin = 0
        if start.get("key"):
            keys = [o["key"] for o in objects]
            if start["key"] not in keys:
                raise ConnectorError(
                    _("The object %(key)s of the checkpoint is gone; read the dataset again from the start.")
                    % {"key": start["key"]},
                    field="location",
                )
            begin = keys.index(start["key"])
            if start.get("etag") and objects[begin]["etag"] != start["etag"]:
                raise ConnectorError(
                    _("The object changed since the checkpoint was taken; read it again from the start."),
                    field="location",
                )
        for i in range(begin, len(objects)):
            obj = objects[i]
            pos = start if i == begin and start.get("key") else {}
            if pos.get("done"):
                continue
            if ref.format == "jsonl":
                chunks = self._read_jsonl(obj, batch_size, int(pos.get("offset", 0)), record_no)
            elif ref.format == "csv":
                chunks = self._read_csv(obj, batch_size, int(pos.get("offset", 0)), record_no, ref.options)
            else:
                chunks = self._read_parquet(obj, batch_size, pos, record_no)
            for records, checkpoint in chunks:
                record_no = checkpoint["record"]
                yield records, {**checkpoint, "key": obj["key"], "etag": obj["etag"]}

    def _lines(self, obj: dict, offset: int):
        """(raw line, byte offset after it) from `offset` to the end of the object, a block at a time."""
        if offset >= obj["size"]:
            return
        body = self._body(obj, offset)
        try:
            pending = b""
            while True:
                block = body.read(_READ_BLOCK)
                if not block:
                    break
                pending += block
                lines = pending.split(b"\n")
                pending = lines.pop()
                for line in lines:
                    offset += len(line) + 1
                    yield line + b"\n", offset
            if pending:
                offset += len(pending)
                yield pending, offset
        finally:
            body.close()

    def _read_jsonl(self, obj, batch_size, offset, record_no):
        lines: list[bytes] = []
        end = offset
        for raw, end in self._lines(obj, offset):
            if not raw.strip():
                continue
            lines.append(raw)
            if len(lines) >= batch_size:
                yield _decode_jsonl(lines, record_no, end), {"offset": end, "record": record_no + len(lines)}
                record_no += len(lines)
                lines = []
        if lines:
            yield _decode_jsonl(lines, record_no, end), {"offset": end, "record": record_no + len(lines)}

    def _read_csv(self, obj, batch_size, offset, record_no, options):
        dialect = _csv_dialect(options)
        header_reader = _OffsetLines(self._lines(obj, 0))
        header = next(csv.reader(header_reader, **dialect), None)
        header_end = header_reader.offset
        header_reader.close()
        if header is None:
            return
        lines = _OffsetLines(self._lines(obj, max(offset, header_end)), max(offset, header_end))
        # As for files: csv pulls lines only as it needs them, so lines.offset is where the next row begins.
        reader = csv.reader(lines, **dialect)
        width = len(header)
        batch: list[dict] = []
        try:
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
        finally:
            lines.close()

    def _read_parquet(self, obj, batch_size, pos, record_no):
        import pyarrow.parquet as pq

        with io.BufferedReader(_RangeFile(self, obj), buffer_size=_READ_BLOCK) as fh:
            pf = pq.ParquetFile(fh)
            group = int(pos.get("row_group", 0))
            skip = int(pos.get("row_offset", 0))
            for g in range(group, pf.num_row_groups):
                skip_here = skip if g == group else 0
                position = 0
                group_rows = pf.metadata.row_group(g).num_rows
                for batch in pf.iter_batches(batch_size=batch_size, row_groups=[g]):
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

    def infer_schema(self, dataset, sample_size: int = 200) -> list[dict]:
        ref = dataset_ref(dataset)
        self.check_format(ref.format)
        if ref.format == "parquet":
            import pyarrow.parquet as pq

            objects = self._objects(ref)
            if not objects:
                return []
            with io.BufferedReader(_RangeFile(self, objects[0]), buffer_size=_READ_BLOCK) as fh:
                return _arrow_fields(pq.ParquetFile(fh).schema_arrow)
        return infer_fields(self.preview(ref, limit=sample_size), from_text=ref.format == "csv")

    def count(self, dataset) -> int:
        ref = dataset_ref(dataset)
        self.check_format(ref.format)
        if ref.format == "parquet":
            import pyarrow.parquet as pq

            total = 0
            for obj in self._objects(ref):
                with io.BufferedReader(_RangeFile(self, obj), buffer_size=_READ_BLOCK) as fh:
                    total += pq.ParquetFile(fh).metadata.num_rows
            return total
        return sum(len(records) for records, _checkpoint in self.read(ref, batch_size=10_000))

    # ---- write ----
    def open_writer(self, location: str, format: str, fields: list[str] | None = None, **options) -> Writer:
        self.check_format(format, sink=True)
        key = self.key(location)
        if key.endswith("/"):
            raise ConnectorError(_("A version is written to an object key, not a prefix."), field="location")
        return S3Writer(self, key, location, format, fields, staging_key=options.get("staging_key"))

    def discard_staged(self, location: str, staging_prefix: str = "") -> list[str]:
        """Abort the unfinished multipart uploads to this location's key (a dead attempt's parts)."""
        key = self.key(location)
        client = self.client()
        bucket = self.config["bucket"]
        aborted = []
        page = self._call(_("Listing uploads"), client.list_multipart_uploads, Bucket=bucket, Prefix=key)
        for upload in page.get("Uploads", []):
            if upload["Key"] != key:
                continue
            self._call(_("Aborting an upload"), client.abort_multipart_upload, Bucket=bucket, Key=key,
                       UploadId=upload["UploadId"])  # fmt: skip
            aborted.append(f"s3://{bucket}/{key}#upload={upload['UploadId']}")
        return aborted

    def remove_location(self, location: str) -> str | None:
        """Delete the object at a location (a completed upload whose publish did not commit)."""
        key = self.key(location)
        client = self.client()
        bucket = self.config["bucket"]
        try:
            self._call(_("Reading %(key)s") % {"key": location}, client.head_object, Bucket=bucket, Key=key)
        except ConnectorError:
            return None
        self._call(_("Deleting %(key)s") % {"key": location}, client.delete_object, Bucket=bucket, Key=key)
        return f"s3://{bucket}/{key}"

    def iter_bytes(self, location: str) -> tuple[Iterator[bytes], int]:
        """The stored bytes of an object, a block at a time, and its size (downloads of a version)."""
        ref = dataset_ref({"location": location, "format": "jsonl"})
        obj = self._objects(ref)[0]
        body = self._body(obj)

        def blocks():
            try:
                while block := body.read(1 << 16):
                    yield block
            finally:
                body.close()

        return blocks(), obj["size"]


class _OffsetLines:
    """A text line iterator over (raw line, offset after it) pairs that knows the offset after the last line."""

    def __init__(self, pairs, offset: int = 0):
        self.pairs = pairs
        self.offset = offset

    def __iter__(self):
        return self

    def __next__(self) -> str:
        raw, self.offset = next(self.pairs)
        return raw.decode("utf-8-sig" if self.offset == len(raw) else "utf-8")

    def close(self):
        close = getattr(self.pairs, "close", None)
        if close:
            close()


class _RangeFile(io.RawIOBase):
    """A read-only, seekable view of one object; every read is a ranged GET pinned to the object's ETag."""

    def __init__(self, connector: S3Connector, obj: dict):
        self.connector = connector
        self.obj = obj
        self.pos = 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self.pos

    def seek(self, offset, whence=io.SEEK_SET):
        if whence == io.SEEK_SET:
            self.pos = offset
        elif whence == io.SEEK_CUR:
            self.pos += offset
        else:
            self.pos = self.obj["size"] + offset
        return self.pos

    def readinto(self, buffer) -> int:
        size = self.obj["size"]
        if self.pos >= size or len(buffer) == 0:
            return 0
        end = min(size, self.pos + len(buffer)) - 1
        c = self.connector
        body = c._call(
            _("Reading %(key)s") % {"key": self.obj["key"]},
            c.client().get_object,
            Bucket=c.config["bucket"],
            Key=self.obj["key"],
            Range=f"bytes={self.pos}-{end}",
            IfMatch=self.obj["etag"],
        )["Body"]
        try:
            data = body.read()
        finally:
            body.close()
        n = len(data)
        buffer[:n] = data
        self.pos += n
        return n


class _PartSink(io.RawIOBase):
    """Where encoded bytes go: hashed and counted, then uploaded as a part whenever a part's worth has gathered."""

    def __init__(self, writer: S3Writer):
        self.writer = writer

    def writable(self):
        return True

    def write(self, data) -> int:
        self.writer._take(bytes(data))
        return len(data)


class S3Writer(Writer):
    """Multipart upload to the target key; nothing is visible until commit() completes it."""

    def __init__(self, connector: S3Connector, key: str, location: str, fmt: str, fields, *, staging_key=None):
        super().__init__()
        self.connector = connector
        self.client = connector.client()
        self.bucket = connector.config["bucket"]
        self.key = key
        self.location = location
        self.format = fmt
        self.part_size = max(_MIN_PART, int(connector.config.get("part_size_mb", 8)) * 1024 * 1024)
        self._buffer = bytearray()
        self._parts: list[dict] = []
        self.size_bytes = 0
        self._finished: dict | None = None
        self._encoder = RecordEncoder(_PartSink(self), fmt, fields)
        metadata = {"dataflare-staging": str(staging_key or uuid.uuid4().hex)[:200]}
        created = connector._call(
            _("Starting the upload of %(key)s") % {"key": location},
            self.client.create_multipart_upload,
            Bucket=self.bucket,
            Key=key,
            ContentType=_CONTENT_TYPES.get(fmt, "application/octet-stream"),
            Metadata=metadata,
        )
        self.upload_id = created["UploadId"]

    def _take(self, data: bytes) -> None:
        self._hash.update(data)
        self.size_bytes += len(data)
        self._buffer += data
        if len(self._buffer) >= self.part_size:
            self._upload_part()

    def _upload_part(self) -> None:
        number = len(self._parts) + 1
        data = bytes(self._buffer)
        self._buffer = bytearray()
        answer = self.connector._call(
            _("Uploading part %(n)d of %(key)s") % {"n": number, "key": self.location},
            self.client.upload_part,
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=data,
            ContentMD5=_md5_b64(data),
        )
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    @property
    def fields(self) -> list[str] | None:
        return self._encoder.fields

    def write(self, records: list[dict]) -> None:
        if self.closed:
            raise ConnectorError(_("The writer is already closed."))
        if not records:
            return
        try:
            self._encoder.write(records)
        except BaseException:
            self.abort()
            raise
        self.records += len(records)

    def write_jsonl_bytes(self, data: bytes, records: int) -> None:
        """Append JSONL that is already encoded as write() would encode it (one record per line)."""
        if self.closed:
            raise ConnectorError(_("The writer is already closed."))
        try:
            self._encoder.write_jsonl_bytes(data)
        except BaseException:
            self.abort()
            raise
        self.records += records

    def finish(self) -> dict:
        """Upload the last part (the object is still invisible); returns location, checksum, records, size."""
        if self.closed:
            raise ConnectorError(_("The writer is already closed."))
        if self._finished is not None:
            return self._finished
        try:
            self._encoder.close()
            if self._buffer or not self._parts:
                self._upload_part()  # the last part may be small (or empty when nothing was written)
        except BaseException:
            self.abort()
            raise
        self._finished = {
            "location": self.location,
            "checksum": self._hash.hexdigest(),
            "records": self.records,
            "size_bytes": self.size_bytes,
        }
        return self._finished

    def commit(self) -> dict:
        """Complete the multipart upload: the object appears whole, in one step."""
        result = self.finish()
        try:
            self.connector._call(
                _("Completing the upload of %(key)s") % {"key": self.location},
                self.client.complete_multipart_upload,
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": self._parts},
            )
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
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
        except Exception:  # noqa: S110 - the reaper aborts what is left (discard_staged)
            pass


def _md5_b64(data: bytes) -> str:
    import base64

    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")


def _clean(exc: Exception) -> str:
    """The first line of a client error (never the credentials: botocore does not put them in messages)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
