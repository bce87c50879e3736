"""A scripted OpenAI-compatible upstream: answers every POST with a streamed answer whose network pieces the test
chooses, so the gateway's relay meets the shapes a real server's stream may take (several events and the end in one
piece, an event split across pieces, a broken connection, silence)."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

MODEL = "scripted-model"


def event(obj: Any) -> bytes:
    """One server-sent event (its blank-line end included)."""
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"


def content(text: str, *, role: bool = False) -> bytes:
    delta = {"role": "assistant", "content": text} if role else {"content": text}
    return event(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        }
    )


def usage(prompt: int, completion: int) -> bytes:
    return event(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "model": MODEL,
            "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        }
    )


DONE = b"data: [DONE]\n\n"


class ScriptedUpstream:
    """Serves `script` to every request on a loopback port; `base_url` is the OpenAI base URL.

    The script's steps: bytes (sent as one HTTP chunk in one socket write: the relay reads it as one piece unless
    the kernel splits it), ("pause", seconds) (so the next write arrives as a piece of its own), "end" (the last
    chunk: the answer is complete), "close" (the connection dropped mid-answer) and "hang" (silence until the
    client goes away or the server stops).
    """

    def __init__(self, script: list) -> None:
        self.script = script
        self.requests: list[dict] = []
        self.gone = threading.Event()  # set when a hanging answer saw its client go away
        self._stop = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> ScriptedUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        self._sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _addr = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            raw = b""
            while b"\r\n\r\n" not in raw:
                more = conn.recv(65536)
                if not more:
                    return
                raw += more
            head, _sep, body = raw.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _colon, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(body) < length:
                body += conn.recv(65536)
            self.requests.append(json.loads(body))
            conn.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
                b"connection: close\r\n\r\n"
            )
            for step in self.script:
                if isinstance(step, bytes):
                    conn.sendall(b"%x\r\n%s\r\n" % (len(step), step))
                elif step == "end":
                    conn.sendall(b"0\r\n\r\n")
                elif step == "close":
                    conn.shutdown(socket.SHUT_RDWR)
                    return
                elif step == "hang":
                    conn.settimeout(0.1)
                    while not self._stop.is_set():
                        try:
                            if conn.recv(1) == b"":
                                self.gone.set()
                                return
                        except TimeoutError:
                            continue
                        except OSError:
                            self.gone.set()
                            return
                    return
                else:
                    time.sleep(step[1])
