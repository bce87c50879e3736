"""A change on the system-config page reaches another running portal process without restart."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from conftest import free_port, redis_url, wait_until

ROOT = Path(__file__).resolve().parents[3]


def _env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "CELERY_BROKER_URL"}}
    env.update(
        DEBUG="true",
        AUTH_MODE="none",
        DATA_DIR=str(tmp_path / "data"),
        CONFIG_FILE=str(tmp_path / "config.json"),
        PYTHONUNBUFFERED="1",
    )
    # Shared cache: Redis when the run has one, otherwise the file cache in DATA_DIR.
    if redis_url():
        env["REDIS_URL"] = redis_url()
    else:
        env.pop("REDIS_URL", None)
    return env


def _serve(env, port, log):
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "gunicorn"), "dataflare_portal.wsgi", "-b", f"127.0.0.1:{port}", "-w", "1"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _up(base):
    try:
        return requests.get(f"{base}/healthz", timeout=60).status_code == 200
    except requests.RequestException:
        return False


@pytest.mark.integration
def test_a_page_change_applies_in_another_running_process(tmp_path):
    env = _env(tmp_path)
    if redis_url():
        import redis

        redis.Redis.from_url(redis_url()).delete(":1:dataflare:config:version")
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True, timeout=300)
    ports = free_port(), free_port()
    log = open(tmp_path / "servers.log", "w")  # noqa: SIM115  (closed in finally, after the servers stop)
    servers = [_serve(env, port, log) for port in ports]
    ok = False
    try:
        page_base, api_base = (f"http://127.0.0.1:{p}" for p in ports)
        wait_until(lambda: _up(page_base) and _up(api_base), timeout=60)
        url = f"{api_base}/api/v1/config/dashboard_refresh_seconds/"
        assert requests.get(url, timeout=60).json()["value"] == 60  # warm: the API process has it memoised

        session = requests.Session()
        page = session.get(f"{page_base}/system/config/", timeout=60)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        response = session.post(
            f"{page_base}/system/config/",
            data={"csrfmiddlewaretoken": token, "dashboard_refresh_seconds": "42"},
            headers={"Referer": f"{page_base}/system/config/"},
            timeout=60,
            allow_redirects=False,
        )
        assert response.status_code == 302, response.text[:2000]

        body = requests.get(url, timeout=60).json()
        assert body["value"] == 42 and body["source"] == "database"
        shown = requests.get(f"{api_base}/system/config/", timeout=60).text
        assert re.search(r'data-key="dashboard_refresh_seconds" data-source="database"', shown)
        ok = True
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(timeout=20)
        log.close()
        if not ok:
            print((tmp_path / "servers.log").read_text()[-5000:])
