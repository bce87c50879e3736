"""A real HTTP file server on loopback for the http connector's tests (threaded http.server, no mocks).

Paths (below http://127.0.0.1:<port>/):
  files/<name>                   the file, with ETag/Last-Modified, HEAD, Range and If-Range (206/200)
  auth/<name>                    the file if `Authorization: Bearer <server.token>` is sent, else 401
  redirect/<n>/<rest>            302 to redirect/<n-1>/<rest> ... then to <rest>
  away/<rest>?to=<url>           302 to the URL given (any host: the client must check it)
  loop                           302 to itself, forever
  nohead/<name>                  405 to HEAD; GET serves the file
  nolength/<name>                the file without Content-Length, the connection closed at the end
  hang/<name>                    headers, then nothing (until the test ends)
  drip/<name>                    headers, then one byte every `drip_seconds`
  stall/<k>/<name>               first request: headers (full length) and k bytes, then nothing; later ones served
  drop/<k>/<name>                first request: headers (full length) and k bytes, then the connection closes
Every request is logged as (method, path, headers) in `server.log`.
"""

from __future__ import annotations

import hashlib
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class FileServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.log: list[tuple[str, str, dict]] = []
        self.token = "tok-test-0001"
        self.drip_seconds = 0.2
        self.stop = threading.Event()
        self._first_seen: set[str] = set()
        self._lock = threading.Lock()

    def handle_error(self, request, client_address):
        pass  # a client that hangs up early (size limit, timeouts) is what the tests do on purpose

    @property
    def port(self) -> int:
        return self.server_address[1]

    def url(self, path: str = "", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/{path}"

    def put(self, name: str, data: bytes) -> str:
        self.files[name] = data
        return self.etag(name)

    def etag(self, name: str) -> str:
        return '"' + hashlib.sha256(self.files[name]).hexdigest()[:16] + '"'

    def first(self, key: str) -> bool:
        with self._lock:
            if key in self._first_seen:
                return False
            self._first_seen.add(key)
            return True

    def requests_for(self, fragment: str) -> list[tuple[str, str, dict]]:
        return [entry for entry in self.log if fragment in entry[1]]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FileServer

    def log_message(self, format, *args):  # quiet
        pass

    def do_HEAD(self):
        if self.path.startswith("/nohead/"):
            self.server.log.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
            self.send_response(405)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._handle(head=True)

    def do_GET(self):
        self._handle(head=False)

    def _redirect(self, to: str):
        self.send_response(302)
        self.send_header("Location", to)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _handle(self, head: bool):
        s = self.server
        s.log.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
        parts = urlsplit(self.path)
        segments = parts.path.lstrip("/").split("/")
        kind = segments[0]
        if kind == "loop":
            return self._redirect("/loop")
        if kind == "redirect":
            n, rest = int(segments[1]), "/".join(segments[2:])
            return self._redirect(f"/redirect/{n - 1}/{rest}" if n > 1 else f"/{rest}")
        if kind == "away":
            return self._redirect(parse_qs(parts.query)["to"][0])
        if kind == "auth":
            if self.headers.get("Authorization") != f"Bearer {s.token}":
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            return self._file(segments[1], head)
        if kind == "nohead":
            return self._file(segments[1], head)
        if kind in ("files", ""):
            if kind == "" or len(segments) < 2:
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            return self._file("/".join(segments[1:]), head)
        if kind == "nolength":
            data = s.files[segments[1]]
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            self.wfile.write(data)
            return
        if kind in ("hang", "drip"):
            data = s.files[segments[1]]
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.flush()
            if kind == "hang":
                s.stop.wait(60)
                return
            for i in range(len(data)):
                if s.stop.is_set():
                    return
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()
                time.sleep(s.drip_seconds)
            return
        if kind in ("stall", "drop"):
            k, name = int(segments[1]), segments[2]
            if self.headers.get("Range") is None and s.first(self.path):
                data = s.files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", s.etag(name))
                self.end_headers()
                self.wfile.write(data[:k])
                self.wfile.flush()
                if kind == "stall":
                    s.stop.wait(60)
                self.close_connection = True
                return
            return self._file(name, head)
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _file(self, name: str, head: bool):
        s = self.server
        if name not in s.files:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = s.files[name]
        etag = s.etag(name)
        start = 0
        wanted = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        end = None
        if wanted and wanted.startswith("bytes=") and (if_range in (None, etag)):
            first, _sep, last = wanted[len("bytes=") :].partition("-")
            start, end = int(first), (int(last) if last else None)
        if start >= len(data) and start:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            self.send_header("ETag", etag)
            self.end_headers()
            return
        stop = len(data) if end is None else min(len(data), end + 1)
        ranged = start or end is not None
        self.send_response(206 if ranged else 200)
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", formatdate(1_700_000_000, usegmt=True))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(stop - start))
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(data)}")
        self.end_headers()
        if not head:
            self.wfile.write(data[start:stop])


def start_server() -> FileServer:
    server = FileServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def stop_server(server: FileServer) -> None:
    server.stop.set()
    server.shutdown()
    server.server_close()
