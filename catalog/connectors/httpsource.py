"""The `http` connector: a CSV, JSONL or Parquet file fetched by URL, downloaded to disk, read by the file readers.

A dataset's location is a path (and query) below the source's base URL. Reading first downloads the file
into a folder of the workspace — the run's own folder when the engine binds one (so every batch of a run
reads the same snapshot), else a shared cache revalidated with If-None-Match/If-Modified-Since — and then
reads it with the file connector's readers (same checkpoints, same planned reads).

Every hop is checked: the client follows redirects itself, and each target URL goes through the SSRF
guard, which resolves the host once; the connection dials the approved address (the name stays for TLS
and the Host header), so neither a redirect nor a DNS answer that changes later can reach a refused
address. Credentials go only to the base URL's origin, never to another host a redirect names.

Downloads are bounded (size, connect/read/total time), streamed to a `.part` file, and resumable: a
retry — in the same call after a dropped connection, or in a later process after a kill — asks for the
rest with `Range` and `If-Range` (the ETag, else Last-Modified) and appends only if the server answers
206 for the same entity; a 200 (changed or no range support) starts over.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import json
import os
import re
import socket
import ssl
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from django.conf import settings
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from dataflare_portal.core.netguard import EndpointRefused, EndpointUnresolvable, approve, connect_tcp

from .base import ConnectionResult, Connector, ConnectorError, dataset_ref
from .files import FILE_FORMATS, LocalFile

_BLOCK = 1 << 16
_REDIRECTS = (301, 302, 303, 307, 308)
# Headers the client sets itself: a configured header may not replace them.
_RESERVED_HEADERS = {
    "host",
    "range",
    "if-range",
    "if-none-match",
    "if-modified-since",
    "content-length",
    "transfer-encoding",
    "connection",
    "accept-encoding",
}
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$")
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
# Attempts per download when the connection drops mid-body (each resumes with Range).
DOWNLOAD_ATTEMPTS = 3


def check_base_url(url: str) -> str:
    """The base URL as a folder URL (ending in /); refuses other schemes, user info and fragments."""
    text = (url or "").strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ConnectorError(_("%(url)r is not a valid URL.") % {"url": url}, field="base_url") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConnectorError(
            _("The base URL must be an http:// or https:// URL with a host, e.g. https://data.example.com/exports/."),
            field="base_url",
        )
    if parts.username is not None or parts.password is not None:
        raise ConnectorError(
            _("The base URL must not carry a user name or password (enter them as credentials)."), field="base_url"
        )
    if parts.query or parts.fragment:
        raise ConnectorError(_("The base URL takes no query or fragment."), field="base_url")
    return text if text.endswith("/") else text + "/"


def check_location(location: str) -> str:
    """A relative path (with an optional query) below the base URL: no scheme, no leading /, no `..`."""
    if not isinstance(location, str) or not location.strip():
        raise ConnectorError(_("A path below the base URL is required."), field="location")
    if any(ord(c) < 33 or ord(c) == 127 for c in location) or "\\" in location:
        raise ConnectorError(
            _("%(path)r contains spaces, backslashes or control characters (percent-encode them).")
            % {"path": location},
            field="location",
        )
    path, _sep, _query = location.partition("?")
    if path.startswith("/") or ":" in path.split("/", 1)[0] or "#" in location:
        raise ConnectorError(
            _("%(path)r is not a relative path below the base URL (no scheme, leading / or fragment).")
            % {"path": location},
            field="location",
        )
    segments = path.split("/")
    # Percent-encoded dots, slashes and backslashes: a server that decodes them would see a traversal.
    encoded = re.search(r"%(2e|2f|5c)", path, re.IGNORECASE)
    if encoded or any(s in ("", ".", "..") for s in segments):
        raise ConnectorError(_("%(path)r has an empty, '.' or '..' segment.") % {"path": location}, field="location")
    return location


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or (443 if parts.scheme == "https" else 80)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection that dials the address the SSRF guard approved, never the name."""

    def __init__(self, approved, *, connect_timeout: float, read_timeout: float):
        super().__init__(approved.host, approved.port, timeout=connect_timeout)
        self._approved = approved
        self._read_timeout = read_timeout

    def connect(self):
        self.sock = connect_tcp(self._approved, self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(self._read_timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """As above over TLS: the certificate is checked against the host name, the socket goes to the address."""

    def __init__(self, approved, *, connect_timeout: float, read_timeout: float, context: ssl.SSLContext):
        super().__init__(approved.host, approved.port, timeout=connect_timeout, context=context)
        self._approved = approved
        self._read_timeout = read_timeout
        self._ctx = context

    def connect(self):
        sock = connect_tcp(self._approved, self.timeout)
        sock.settimeout(self._read_timeout)
        self.sock = self._ctx.wrap_socket(sock, server_hostname=self._approved.host)


class HTTPConnector(Connector):
    kind = "http"
    label = gettext_lazy("HTTP(S) download")
    formats = FILE_FORMATS
    sink_formats = ()
    secret_fields = ("bearer_token", "password", "headers")
    secret_multiline = ("headers",)
    secret_labels = {
        "bearer_token": gettext_lazy("Bearer token"),
        "headers": gettext_lazy("Extra headers (one 'Name: value' a line)"),
    }
    config_schema = {
        "type": "object",
        "properties": {
            "base_url": {
                "type": "string",
                "minLength": 1,
                "maxLength": 500,
                "title": gettext_lazy("Base URL"),
                "description": gettext_lazy(
                    "http(s) URL of the folder the files are in, e.g. https://data.example.com/exports/; "
                    "a dataset's location is a path below it."
                ),
            },
            "username": {
                "type": "string",
                "default": "",
                "maxLength": 200,
                "title": gettext_lazy("User name (basic auth)"),
                "description": gettext_lazy("With the password credential: HTTP basic authentication."),
            },
            "test_path": {
                "type": "string",
                "default": "",
                "maxLength": 500,
                "title": gettext_lazy("Path to test"),
                "description": gettext_lazy(
                    "The connection test asks for this path below the base URL (empty: the base URL)."
                ),
            },
            "verify_tls": {"type": "boolean", "default": True, "title": gettext_lazy("Verify TLS certificates")},
            "connect_timeout": {
                "type": "integer",
                "minimum": 1,
                "maximum": 60,
                "default": 10,
                "title": gettext_lazy("Connect timeout (s)"),
            },
            "read_timeout": {
                "type": "integer",
                "minimum": 1,
                "maximum": 600,
                "default": 60,
                "title": gettext_lazy("Read timeout (s)"),
                "description": gettext_lazy("The longest wait for the next bytes from the server."),
            },
            "total_timeout": {
                "type": "integer",
                "minimum": 1,
                "maximum": 86400,
                "default": 3600,
                "title": gettext_lazy("Total time limit (s)"),
                "description": gettext_lazy("A download that takes longer is stopped (it resumes on the next try)."),
            },
            "max_size_mb": {
                "type": "integer",
                "minimum": 1,
                "maximum": 1048576,
                "default": 1024,
                "title": gettext_lazy("Largest file (MB)"),
            },
            "max_redirects": {
                "type": "integer",
                "minimum": 0,
                "maximum": 10,
                "default": 5,
                "title": gettext_lazy("Redirects to follow"),
            },
        },
        "required": ["base_url"],
        "additionalProperties": False,
    }

    def __init__(self, config: dict, secret: dict | None = None):
        super().__init__(config, secret)
        self._workspace: Path | None = None

    # ---- config ----
    def validate_config(self) -> None:
        base = check_base_url(self.config.get("base_url", ""))
        if self.config.get("test_path"):
            check_location(self.config["test_path"])
        scheme, host, port = _origin(base)
        try:
            approve(host, port, field="base_url")
        except EndpointRefused as exc:
            # A name that does not resolve now may later; a refused address is refused now.
            if not isinstance(exc, EndpointUnresolvable):
                raise ConnectorError(str(exc), field="base_url") from None

    def validate_location(self, fmt: str, location: str) -> None:
        check_location(location)

    def url(self, location: str) -> str:
        """The absolute URL of a dataset location (traversal refused)."""
        return check_base_url(self.config.get("base_url", "")) + check_location(location)

    def bind_workspace(self, folder: Path) -> None:
        """Download into `folder`/downloads (the engine binds the run's folder: one snapshot per run)."""
        self._workspace = Path(folder) / "downloads"

    # ---- requests ----
    def _auth_headers(self) -> dict:
        headers = {}
        for line in (self.secret.get("headers") or "").splitlines():
            if not line.strip():
                continue
            name, sep, value = line.partition(":")
            name, value = name.strip(), value.strip()
            if not sep or not _HEADER_NAME.match(name) or any(c in value for c in "\r\n\x00"):
                raise ConnectorError(
                    _("Each extra header is one line 'Name: value'; %(line)r is not.") % {"line": name[:40]},
                    field="secret.headers",
                )
            if name.lower() in _RESERVED_HEADERS:
                raise ConnectorError(
                    _("The header %(name)s is set by the connector and cannot be configured.") % {"name": name},
                    field="secret.headers",
                )
            headers[name] = value
        token = self.secret.get("bearer_token")
        password = self.secret.get("password")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        elif password or self.config.get("username"):
            import base64

            pair = f"{self.config.get('username', '')}:{password or ''}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        return headers

    def _connection(self, url: str, field: str, timeout_left: float):
        scheme, host, port = _origin(url)
        try:
            approved = approve(host, port, field=field)
        except EndpointRefused as exc:
            raise ConnectorError(str(exc), field=field) from None
        connect_timeout = max(0.1, min(float(self.config.get("connect_timeout", 10)), timeout_left))
        read_timeout = max(0.1, min(float(self.config.get("read_timeout", 60)), timeout_left))
        if scheme == "https":
            context = ssl.create_default_context()
            if not self.config.get("verify_tls", True):
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            return _PinnedHTTPSConnection(
                approved, connect_timeout=connect_timeout, read_timeout=read_timeout, context=context
            )
        return _PinnedHTTPConnection(approved, connect_timeout=connect_timeout, read_timeout=read_timeout)

    def request(self, url: str, method: str = "GET", headers: dict | None = None, *, deadline: float | None = None):
        """(response, connection, final URL) after following redirects, each hop approved by the SSRF guard.

        Credentials go to the base URL's origin only. The caller reads the response and closes the connection.
        """
        deadline = deadline or (time.monotonic() + float(self.config.get("total_timeout", 3600)))
        base_origin = _origin(check_base_url(self.config.get("base_url", "")))
        auth = self._auth_headers()
        hops = int(self.config.get("max_redirects", 5))
        for hop in range(hops + 1):
            parts = urlsplit(url)
            field = "base_url" if hop == 0 else "location"
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConnectorError(
                    _("The server redirected to %(url)s, which is not an http(s) URL.") % {"url": url[:200]},
                    field=field,
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConnectorError(_("The download took longer than the total time limit."), field="total_timeout")
            try:
                conn = self._connection(url, field, left)
            except ConnectorError as exc:
                if hop:
                    raise ConnectorError(
                        _("The server redirected to %(url)s, which is refused: %(reason)s")
                        % {"url": url[:200], "reason": exc.message},
                        field="location",
                    ) from None
                raise
            sent = {"Accept-Encoding": "identity", "User-Agent": "DataFlare-Portal", **(headers or {})}
            if _origin(url) == base_origin:
                sent.update(auth)
            target = parts.path or "/"
            if parts.query:
                target += "?" + parts.query
            try:
                conn.request(method, target, headers=sent)
                response = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise ConnectorError(
                    _("%(url)s: %(error)s") % {"url": _shown(url), "error": _describe(exc)}, field="location"
                ) from None
            if response.status in _REDIRECTS:
                target = response.getheader("Location")
                conn.close()
                if not target:
                    raise ConnectorError(_("The server redirected without a Location."), field="location")
                url = urljoin(url, target.strip())
                continue
            return response, conn, url
        raise ConnectorError(
            _("More than %(n)d redirects; the file was not fetched.") % {"n": hops}, field="max_redirects"
        )

    # ---- test ----
    def test_connection(self) -> ConnectionResult:
        started = time.perf_counter()
        ms = lambda: (time.perf_counter() - started) * 1000  # noqa: E731
        try:
            base = check_base_url(self.config.get("base_url", ""))
            url = base + check_location(self.config["test_path"]) if self.config.get("test_path") else base
            deadline = (
                time.monotonic()
                + float(self.config.get("connect_timeout", 10))
                + float(self.config.get("read_timeout", 60))
            )
            response, conn, final = self.request(url, "HEAD", deadline=deadline)
            conn.close()
            if response.status in (405, 501):
                # No HEAD here: ask for the first byte instead.
                response, conn, final = self.request(url, "GET", {"Range": "bytes=0-0"}, deadline=deadline)
                conn.close()
        except ConnectorError as exc:
            return ConnectionResult(False, exc.message, ms())
        if response.status >= 400:
            return ConnectionResult(
                False,
                _("%(url)s answered %(status)d %(reason)s.")
                % {"url": _shown(final), "status": response.status, "reason": response.reason},
                ms(),
            )
        return ConnectionResult(
            True, _("%(url)s answered %(status)d.") % {"url": _shown(final), "status": response.status}, ms()
        )

    # ---- download ----
    def _folder(self) -> Path:
        folder = self._workspace or Path(settings.WORKSPACE_DIR) / "downloads"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def local_path(self, location: str, fmt: str) -> Path:
        """Where the download of a location goes (named by the hash of the URL and the credentials).

        The credentials count: two sources with the same URL but other tokens never share a download.
        """
        key = json.dumps([self.url(location), sorted(self.secret.items()), self.config.get("username", "")])
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        return self._folder() / f"{digest}.{fmt}"

    def fetch(self, location: str, fmt: str, *, revalidate: bool | None = None) -> Path:
        """The downloaded file of a location: reused when complete, else fetched (resuming a `.part`)."""
        url = self.url(location)
        target = self.local_path(location, fmt)
        if revalidate is None:
            revalidate = self._workspace is None  # a run's snapshot is not fetched again
        with _locked(target.with_name(target.name + ".lock")):
            meta = _load_meta(target)
            complete = target.is_file() and meta.get("complete") and meta.get("url") == url
            if complete and (not revalidate or self._unchanged(url, meta)):
                # Its last use: the workspace retention duty prunes downloads nobody used for a while.
                os.utime(_meta_path(target))
                return target
            self._download(url, target, meta)
        return target

    def _unchanged(self, url: str, meta: dict) -> bool:
        headers = {}
        if meta.get("etag"):
            headers["If-None-Match"] = meta["etag"]
        if meta.get("last_modified"):
            headers["If-Modified-Since"] = meta["last_modified"]
        if not headers:
            return False
        response, conn, _final = self.request(url, "GET", headers)
        conn.close()
        return response.status == 304

    def _download(self, url: str, target: Path, meta: dict) -> None:
        part = target.with_name(target.name + ".part")
        limit = int(self.config.get("max_size_mb", 1024)) * 1024 * 1024
        deadline = time.monotonic() + float(self.config.get("total_timeout", 3600))
        if meta.get("url") != url or meta.get("complete"):
            meta = {"url": url}
            part.unlink(missing_ok=True)
        last_error = None
        for _attempt in range(DOWNLOAD_ATTEMPTS):
            try:
                if self._download_once(url, part, target, meta, limit, deadline):
                    return
            except _Interrupted as exc:
                last_error = exc.message
                if time.monotonic() >= deadline:
                    break
        raise ConnectorError(
            _("The download of %(url)s broke off: %(error)s (it resumes from here on the next try).")
            % {"url": _shown(url), "error": last_error},
            field="location",
        )

    def _download_once(self, url, part: Path, target: Path, meta: dict, limit: int, deadline: float) -> bool:
        have = part.stat().st_size if part.exists() else 0
        validator = meta.get("etag") or meta.get("last_modified")
        headers = {}
        if have and validator:
            headers = {"Range": f"bytes={have}-", "If-Range": validator}
        elif have:
            part.unlink(missing_ok=True)  # nothing to prove the rest belongs to the same file: start over
            have = 0
        response, conn, final = self.request(url, "GET", headers, deadline=deadline)
        try:
            status = response.status
            length = response.getheader("Content-Length")
            length = int(length) if length and length.isdigit() else None
            if status == 206 and have:
                match = _CONTENT_RANGE.match(response.getheader("Content-Range") or "")
                etag = response.getheader("ETag")
                if not match or int(match.group(1)) != have or (meta.get("etag") and etag != meta["etag"]):
                    part.unlink(missing_ok=True)
                    raise _Interrupted(_("the server answered the resume with another range or file"))
                total = None if match.group(3) == "*" else int(match.group(3))
                mode = "ab"
            elif status == 200:
                have, mode, total = 0, "wb", length
                meta.clear()
                meta.update(
                    url=url,
                    etag=response.getheader("ETag") or "",
                    last_modified=response.getheader("Last-Modified") or "",
                )
            elif status == 416 and have:
                part.unlink(missing_ok=True)
                raise _Interrupted(_("the server refused the resume range"))
            else:
                field = "secret" if status in (401, 403) else "location"
                raise ConnectorError(
                    _("%(url)s answered %(status)d %(reason)s.")
                    % {"url": _shown(final), "status": status, "reason": response.reason},
                    field=field,
                )
            if total is not None and total > limit:
                part.unlink(missing_ok=True)
                raise ConnectorError(
                    _("%(url)s is %(size)d bytes, more than the limit of %(limit)d MB.")
                    % {"url": _shown(final), "size": total, "limit": limit // (1024 * 1024)},
                    field="max_size_mb",
                )
            _save_meta(target, meta)  # before any byte: a killed download can be resumed against it
            with part.open(mode) as fh:
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ConnectorError(
                            _("The download of %(url)s took longer than the total time limit (%(s)d s).")
                            % {"url": _shown(final), "s": int(self.config.get("total_timeout", 3600))},
                            field="total_timeout",
                        )
                    if conn.sock is not None:
                        conn.sock.settimeout(max(0.05, min(float(self.config.get("read_timeout", 60)), left)))
                    try:
                        block = response.read1(_BLOCK)
                    except TimeoutError:
                        if deadline - time.monotonic() <= 0:
                            continue  # the total limit speaks
                        raise _Interrupted(
                            _("no data for %(s)d s (read timeout)") % {"s": int(self.config.get("read_timeout", 60))}
                        ) from None
                    except (OSError, http.client.HTTPException) as exc:
                        raise _Interrupted(_describe(exc)) from None
                    if not block:
                        break
                    have += len(block)
                    if have > limit:
                        fh.close()
                        part.unlink(missing_ok=True)
                        raise ConnectorError(
                            _("%(url)s is larger than the limit of %(limit)d MB.")
                            % {"url": _shown(final), "limit": limit // (1024 * 1024)},
                            field="max_size_mb",
                        )
                    fh.write(block)
                fh.flush()
                os.fsync(fh.fileno())
            if total is not None and have < total:
                raise _Interrupted(
                    _("the connection closed after %(n)d of %(total)d bytes") % {"n": have, "total": total}
                )
            os.replace(part, target)
            meta.update(complete=True, size=have)
            _save_meta(target, meta)
            return True
        finally:
            conn.close()

    # ---- read (the file connector's readers, on the downloaded file) ----
    def _local(self, dataset, *, start: dict | None = None) -> LocalFile:
        ref = dataset_ref(dataset)
        self.check_format(ref.format)
        # A read that resumes from a checkpoint uses the file it was taken on; a fresh one revalidates the cache.
        path = self.fetch(ref.location, ref.format, revalidate=None if start is None else False)
        return LocalFile(path)

    def read(self, dataset, batch_size: int = 1000, start: dict | None = None):
        return self._local(dataset, start=start).read(dataset, batch_size=batch_size, start=start)

    def can_plan_reads(self, dataset) -> bool:
        return dataset_ref(dataset).format == "jsonl"

    def plan_reads(self, dataset, batch_size: int = 1000, max_chunks: int | None = None, after: dict | None = None):
        return self._local(dataset, start=after).plan_reads(
            dataset, batch_size=batch_size, max_chunks=max_chunks, after=after
        )

    def input_bytes(self, dataset) -> int | None:
        return self._local(dataset, start={}).input_bytes(dataset)

    def infer_schema(self, dataset, sample_size: int = 200) -> list[dict]:
        return self._local(dataset).infer_schema(dataset, sample_size=sample_size)

    def count(self, dataset) -> int:
        return self._local(dataset).count(dataset)


class _Interrupted(Exception):
    """A download that broke off in a way a resume can fix."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@contextmanager
def _locked(path: Path):
    """An exclusive lock between the workers that fetch the same file (one downloads, the others wait)."""
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _meta_path(target: Path) -> Path:
    return target.with_name(target.name + ".meta.json")


def _load_meta(target: Path) -> dict:
    try:
        value = json.loads(_meta_path(target).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _save_meta(target: Path, meta: dict) -> None:
    path = _meta_path(target)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, path)


def _shown(url: str) -> str:
    """A URL for messages: without its query (which may carry a token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _describe(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
