"""A real portal process (uvicorn, the ASGI app) on a free loopback port, sharing the test's database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import free_port, wait_until
from modelserver.testing import model_server, openai_server  # noqa: F401  (re-exported fixtures)
from tasks.tests.conftest import _session_tmp, shared_db  # noqa: F401  (re-exported fixtures)

BASE_DIR = Path(__file__).resolve().parents[2]
CACHE_SECONDS = 1.0


@pytest.fixture(autouse=True)
def _fresh_gateway_caches():
    """Each test starts with empty in-process caches (this process's: the test client's calls)."""
    from gateway.runtime import caches

    caches.clear()
    yield
    caches.clear()


class Portal:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def portal(shared_db, tmp_path):  # noqa: F811
    """`uvicorn dataflare_portal.asgi:application` as the compose/k8s web runs it (one worker)."""
    port = free_port()
    log = tmp_path / "portal.log"
    env = {**os.environ, **shared_db, "DATA_DIR": str(tmp_path / "portal-data"), "DEBUG": "true"}
    env.setdefault("AUTH_MODE", "none")
    # The revocation bound across processes (gateway/runtime.py); short so the tests see it pass.
    env["GATEWAY_CACHE_SECONDS"] = str(CACHE_SECONDS)
    handle = open(log, "ab")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "dataflare_portal.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "info",
        ],
        cwd=BASE_DIR,
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    portal = Portal(proc, port, log)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the portal exited ({proc.returncode}):\n{portal.log_text()[-3000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, timeout=90, interval=0.2)
        yield portal
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        handle.close()
