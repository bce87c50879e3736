"""Test helpers: a real reference server in-process on a free loopback port; hostile DNS and a recording listener."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from .faults import FaultSettings
from .server import ServerHandle, serve

__all__ = [
    "RebindingResolver",
    "RecordingListener",
    "model_server",
    "openai_server",
    "rebinding_servers",
    "running_server",
]


@contextmanager
def running_server(faults: FaultSettings | None = None, **kwargs: Any) -> Iterator[ServerHandle]:
    """Serve on 127.0.0.1:<free port> for the duration of the block."""
    handle = serve("127.0.0.1", 0, faults=faults, **kwargs)
    try:
        yield handle
    finally:
        handle.stop(grace=0.5)


@pytest.fixture
def model_server() -> Iterator[ServerHandle]:
    """A fresh reference server per test (fault knobs on `.faults`, address on `.address`)."""
    with running_server() as handle:
        yield handle


@pytest.fixture
def openai_server() -> Iterator[ServerHandle]:
    """A fresh reference server with its OpenAI-compatible face (`.http.base_url`, `.http.usage`) per test."""
    with running_server(http_port=0) as handle:
        yield handle


# ---- DNS rebinding: a resolver the test scripts, and a "private" server that records connections --------
class RebindingResolver:
    """A stand-in for socket.getaddrinfo that answers names under `.rebind.test` from a script, like a hostile DNS.

    `script(name, "127.0.0.1", "127.0.0.2")` answers the first query with 127.0.0.1 and every later one
    with 127.0.0.2 (the last answer repeats). Other names go to the real resolver. gRPC's own resolver
    (c-ares) and libpq never see this one, so a connection to an answer it gave proves that the caller
    dialled the address the Python-side check was given.
    """

    SUFFIX = ".rebind.test"

    def __init__(self, real=socket.getaddrinfo) -> None:
        self.real = real
        self.answers: dict[str, list[str]] = {}
        self.queries: list[str] = []
        self._lock = threading.Lock()

    def script(self, name: str, *answers: str) -> None:
        """Answers for `name`, one per query; the last repeats."""
        with self._lock:
            self.answers[name.lower()] = list(answers)

    def __call__(self, host, port, family=0, type=0, proto=0, flags=0):  # noqa: A002  (socket's own names)
        name = host.lower().rstrip(".") if isinstance(host, str) else host
        if not (isinstance(name, str) and name.endswith(self.SUFFIX)):
            return self.real(host, port, family, type, proto, flags)
        with self._lock:
            self.queries.append(name)
            answers = self.answers.get(name)
            if not answers:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            address = answers.pop(0) if len(answers) > 1 else answers[0]
        fam = socket.AF_INET6 if ":" in address else socket.AF_INET
        sockaddr = (address, int(port or 0), 0, 0) if fam == socket.AF_INET6 else (address, int(port or 0))
        return [(fam, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr)]


class RecordingListener:
    """A TCP listener that records every connection and forwards it to `upstream` (a real server behind it)."""

    def __init__(self, host: str, port: int, upstream: tuple[str, int] | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.upstream = upstream
        self.peers: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, name="recording-listener", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"{host}:{port}"

    @property
    def connections(self) -> int:
        """Connections accepted so far."""
        return len(self.peers)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.peers.append(peer)
            self._conns.append(conn)
            if self.upstream is None:
                continue
            try:
                up = socket.create_connection(self.upstream, timeout=2)
            except OSError:
                conn.close()
                continue
            self._conns.append(up)
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.close()


@contextmanager
def rebinding_servers(**kwargs: Any) -> Iterator[tuple[ServerHandle, RecordingListener]]:
    """A real server on 127.0.0.1:P (the approved address) and a recording real server on 127.0.0.2:P (the private one).

    Both listen on the same port, so only the address a name resolves to decides which one a client reaches.
    """
    internal = serve("127.0.0.1", 0)  # the "internal service" the private address leads to
    try:
        for _ in range(20):
            public = serve("127.0.0.1", 0, **kwargs)
            try:
                private = RecordingListener("127.0.0.2", public.port, upstream=("127.0.0.1", internal.port))
            except OSError:
                public.stop(grace=0)
                continue
            break
        else:
            raise OSError("no port free on both 127.0.0.1 and 127.0.0.2")
        try:
            yield public, private
        finally:
            private.close()
            public.stop(grace=0.5)
    finally:
        internal.stop(grace=0.5)
