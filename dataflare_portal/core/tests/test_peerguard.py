"""AUTH_MODE=none is enforced while serving: remote peers get 403, a visible remote bind refuses to start."""
# ruff: noqa: S104  (binding to all interfaces is the case under test)

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from django.core.exceptions import ImproperlyConfigured

from conftest import free_port
from dataflare_portal.core import peerguard

ROOT = Path(__file__).resolve().parents[3]
GUNICORN = str(Path(sys.executable).parent / "gunicorn")


# ---- The request guard (in-process) --------------------------------------------------------------
@pytest.fixture
def none_mode(settings):
    settings.AUTH_MODE, settings.AUTH_MODE_NONE_ALLOW_REMOTE, settings.TRUSTED_PROXIES = "none", False, []
    return settings


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/v1/catalog/projects/", "/", "/healthz", "/admin/login/"])
def test_it_refuses_a_remote_peer_in_none_mode(client, none_mode, path):
    response = client.get(path, REMOTE_ADDR="10.1.2.3")
    assert response.status_code == 403
    if path.startswith("/api/"):
        assert response.json()["error"]["code"] == "remote_refused"


@pytest.mark.django_db
def test_it_refuses_remote_writes_before_csrf_or_auth(client, none_mode):
    response = client.post("/api/v1/catalog/projects/", {"name": "x"}, REMOTE_ADDR="192.0.2.7")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "remote_refused"


@pytest.mark.django_db
@pytest.mark.parametrize("peer", ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"])
def test_it_serves_loopback_peers_in_none_mode(client, none_mode, peer):
    assert client.get("/api/v1/catalog/projects/", REMOTE_ADDR=peer).status_code == 200


@pytest.mark.django_db
def test_it_logs_each_refusal(client, none_mode, caplog):
    with caplog.at_level("WARNING", logger="dataflare.security"):
        client.get("/api/v1/", REMOTE_ADDR="10.9.9.9")
    assert any("10.9.9.9" in r.getMessage() and "refused" in r.getMessage() for r in caplog.records)


@pytest.mark.django_db
def test_it_ignores_x_forwarded_for_without_a_trusted_proxy(client, none_mode):
    # A remote client cannot claim to be loopback...
    assert client.get("/api/v1/", REMOTE_ADDR="10.1.2.3", HTTP_X_FORWARDED_FOR="127.0.0.1").status_code == 403
    # ...and a local peer that is not a configured proxy is judged by its own address.
    assert client.get("/api/v1/", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="10.1.2.3").status_code != 403


@pytest.mark.django_db
def test_it_judges_the_forwarded_client_behind_a_trusted_proxy(client, none_mode):
    none_mode.TRUSTED_PROXIES = ["127.0.0.1", "10.0.0.0/24"]
    remote = client.get("/api/v1/", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.9, 10.0.0.4")
    assert remote.status_code == 403
    # A client-written left-most entry proves nothing: the right-most untrusted hop counts.
    spoofed = client.get("/api/v1/", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="127.0.0.1, 203.0.113.9")
    assert spoofed.status_code == 403
    local = client.get("/api/v1/", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="127.0.0.1")
    assert local.status_code != 403


@pytest.mark.django_db
def test_it_lets_remote_peers_through_in_local_mode_and_with_allow_remote(client, none_mode, admin_user):
    none_mode.AUTH_MODE_NONE_ALLOW_REMOTE = True
    assert client.get("/api/v1/", REMOTE_ADDR="10.1.2.3").status_code == 200
    none_mode.AUTH_MODE_NONE_ALLOW_REMOTE, none_mode.AUTH_MODE = False, "local"
    # local mode: the peer address does not matter, authentication does.
    assert client.get("/api/v1/catalog/projects/", REMOTE_ADDR="10.1.2.3").status_code == 401


@pytest.mark.django_db
def test_secure_proxy_ssl_header_is_off_without_a_trusted_proxy(client):
    from django.conf import settings

    assert settings.TRUSTED_PROXIES == [] and settings.SECURE_PROXY_SSL_HEADER is None
    from django.test import RequestFactory

    request = RequestFactory().get("/", HTTP_X_FORWARDED_PROTO="https")
    assert request.is_secure() is False


def test_secure_proxy_ssl_header_follows_trusted_proxies(tmp_path):
    env = {**os.environ, "DATA_DIR": str(tmp_path), "ENV_FILE": str(tmp_path / "none.env")}
    code = "from django.conf import settings; import django; django.setup(); print(settings.SECURE_PROXY_SSL_HEADER)"
    run = [sys.executable, "-c", code]
    env["DJANGO_SETTINGS_MODULE"] = "dataflare_portal.settings"
    plain = subprocess.run(run, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    assert plain.stdout.strip() == "None"
    env["TRUSTED_PROXIES"] = "10.0.0.1"
    proxied = subprocess.run(run, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    assert "HTTP_X_FORWARDED_PROTO" in proxied.stdout


# ---- The start guard: which binds it sees ------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["gunicorn", "dataflare_portal.wsgi", "-b", "0.0.0.0:8000"], {}, ["0.0.0.0"]),
        (["gunicorn", "dataflare_portal.wsgi", "--bind=[::]:80", "-b", "127.0.0.1:1"], {}, ["::", "127.0.0.1"]),
        (["gunicorn", "dataflare_portal.wsgi"], {"GUNICORN_CMD_ARGS": "--bind 10.0.0.5:8000"}, ["10.0.0.5"]),
        (["gunicorn", "dataflare_portal.wsgi"], {"PORT": "9000"}, ["0.0.0.0"]),
        (["gunicorn", "dataflare_portal.wsgi"], {}, ["127.0.0.1"]),
        (["gunicorn", "dataflare_portal.wsgi", "-b", "unix:/tmp/x.sock"], {}, []),
        (["manage.py", "runserver", "0.0.0.0:8000"], {}, ["0.0.0.0"]),
        (["manage.py", "runserver", "8000"], {}, ["127.0.0.1"]),
        (["manage.py", "runserver", "[::]:8000", "--noreload"], {}, ["::"]),
        (["manage.py", "runserver"], {}, ["127.0.0.1"]),
        (["uvicorn", "dataflare_portal.asgi:application", "--host", "0.0.0.0"], {}, ["0.0.0.0"]),
        (["daphne", "-b", "10.0.0.2", "dataflare_portal.asgi:application"], {}, ["10.0.0.2"]),
    ],
)
def test_it_sees_the_bind_of_each_server(monkeypatch, tmp_path, argv, env, expected):
    monkeypatch.chdir(tmp_path)  # no stray gunicorn.conf.py
    for name in ("GUNICORN_CMD_ARGS", "PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(peerguard, "_listening_sockets", list)
    assert peerguard.detected_binds(argv) == expected


def test_it_reads_the_gunicorn_config_file(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gunicorn.conf.py").write_text('bind = ["0.0.0.0:8000"]\n')
    monkeypatch.setattr(peerguard, "_listening_sockets", list)
    assert peerguard.detected_binds(["gunicorn", "dataflare_portal.wsgi"]) == ["0.0.0.0"]


def test_it_sees_an_inherited_listening_socket():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert "127.0.0.1" in peerguard._listening_sockets()


def test_start_guard_refuses_a_remote_bind_and_allows_loopback(settings, monkeypatch, caplog):
    settings.AUTH_MODE, settings.AUTH_MODE_NONE_ALLOW_REMOTE = "none", False
    monkeypatch.setattr(peerguard, "_listening_sockets", list)
    with caplog.at_level("WARNING", logger="dataflare.security"):
        with pytest.raises(ImproperlyConfigured, match="0.0.0.0"):
            peerguard.assert_safe_bind("WSGI", ["manage.py", "runserver", "0.0.0.0:8000"])
        peerguard.assert_safe_bind("WSGI", ["manage.py", "runserver", "127.0.0.1:8000"])
    levels = [r.levelname for r in caplog.records]
    assert "CRITICAL" in levels and "WARNING" in levels
    settings.AUTH_MODE = "local"
    peerguard.assert_safe_bind("WSGI", ["manage.py", "runserver", "0.0.0.0:8000"])


# ---- Real servers ---------------------------------------------------------------------------------
def _server_env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "CELERY_BROKER_URL", "REDIS_URL", "PORT"}}
    env.update(
        DEBUG="true",
        AUTH_MODE="none",
        AUTH_MODE_NONE_ALLOW_REMOTE="false",
        DATA_DIR=str(tmp_path / "data"),
        ENV_FILE=str(tmp_path / "none.env"),
        PYTHONUNBUFFERED="1",
    )
    env.pop("GUNICORN_CMD_ARGS", None)
    env.pop("TRUSTED_PROXIES", None)
    return env


@pytest.mark.integration
def test_gunicorn_refuses_to_start_in_none_mode_on_a_remote_bind(tmp_path):
    port = free_port()
    bind = f"0.0.0.0:{port}"
    proc = subprocess.run(
        [GUNICORN, "dataflare_portal.wsgi:application", "-b", bind, "-w", "1", "--timeout", "20"],
        cwd=ROOT,
        env=_server_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "AUTH_MODE=none refuses to start on 0.0.0.0" in out


@pytest.mark.integration
def test_runserver_refuses_to_serve_in_none_mode_on_all_interfaces(tmp_path):
    port = free_port()
    env = _server_env(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"0.0.0.0:{port}", "--noreload", "--skip-checks"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, out
    assert "AUTH_MODE=none refuses to start on 0.0.0.0" in out


# A veth pair into a network namespace this test creates: the only non-loopback peer we may use.
@pytest.fixture
def netns_peer():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to create a network namespace with a non-loopback peer")
    tag = f"{os.getpid() % 10000}"
    ns, host_if, ns_if = f"dfsec{tag}", f"dfh{tag}", f"dfn{tag}"
    octet = os.getpid() % 250 + 1
    host_ip, ns_ip = f"10.231.{octet}.1", f"10.231.{octet}.2"

    def ip(*args, check=True):
        return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)

    try:
        ip("netns", "add", ns)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create a network namespace here: {exc.stderr.strip()}")
    try:
        ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        ip("link", "set", ns_if, "netns", ns)
        ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("-n", ns, "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        ip("-n", ns, "link", "set", ns_if, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        yield {"ns": ns, "host_ip": host_ip, "peer_ip": ns_ip}
    finally:
        ip("link", "del", host_if, check=False)
        ip("netns", "del", ns, check=False)


def _wait_up(url: str, proc, log_path: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early:\n{log_path.read_text()[-3000:]}")
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException:
            time.sleep(0.3)
    raise AssertionError(f"server did not come up:\n{log_path.read_text()[-3000:]}")


def _get_from_namespace(ns: str, url: str) -> int:
    code = (
        "import sys, urllib.request, urllib.error\n"
        "try:\n    print(urllib.request.urlopen(sys.argv[1], timeout=10).status)\n"
        "except urllib.error.HTTPError as e:\n    print(e.code)\n"
    )
    out = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code, url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(out.stdout.strip())


@pytest.mark.integration
def test_gunicorn_in_none_mode_refuses_a_remote_peer(tmp_path, netns_peer):
    """A bind the start guard cannot see (Django's own app factory, not our WSGI entry) on a
    non-loopback address: the request guard still refuses the peer in the namespace."""
    port, local_port = free_port(), free_port()
    log_path = tmp_path / "gunicorn.log"
    env = {**_server_env(tmp_path), "DJANGO_SETTINGS_MODULE": "dataflare_portal.settings"}
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True, timeout=300)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                GUNICORN,
                "django.core.wsgi:get_wsgi_application()",
                "-b",
                f"{netns_peer['host_ip']}:{port}",
                "-b",
                f"127.0.0.1:{local_port}",
                "-w",
                "1",
                "--timeout",
                "30",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_up(f"http://127.0.0.1:{local_port}/healthz", proc, log_path)
        remote_url = f"http://{netns_peer['host_ip']}:{port}"
        assert _get_from_namespace(netns_peer["ns"], f"{remote_url}/api/v1/catalog/projects/") == 403
        assert _get_from_namespace(netns_peer["ns"], f"{remote_url}/healthz") == 403
        assert requests.get(f"http://127.0.0.1:{local_port}/healthz", timeout=10).status_code == 200
        assert requests.get(f"http://127.0.0.1:{local_port}/api/v1/catalog/projects/", timeout=10).status_code == 200
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert f"refused GET /api/v1/catalog/projects/ from {netns_peer['peer_ip']}" in log_path.read_text()
