"""Project-wide test fixtures: personas, isolated data folders, and real-service helpers."""

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_portal(settings, tmp_path):
    """Each test gets its own data folders and a private cache, so parallel runs never share state."""
    for name in ("WORKSPACE_DIR", "ARCHIVE_DIR"):
        path = tmp_path / name.lower()
        path.mkdir()
        setattr(settings, name, path)
    files = tmp_path / "files"
    files.mkdir()
    settings.FILE_ROOTS = [files]
    settings.CONFIG_FILE = tmp_path / "config.json"
    if not os.environ.get("REDIS_URL"):
        settings.CACHES = {
            "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": str(tmp_path)}
        }
    else:
        _forget_shared_cache_state()
    yield
    # A request through LocaleMiddleware leaves its language active in this thread; a later test that
    # reads a message outside a request would see Chinese after a test that switched to it.
    from django.utils import translation

    translation.deactivate()


def _forget_shared_cache_state() -> None:
    """On the shared Redis cache, start each test with fresh per-address login budgets and failure
    counters: every test client posts from 127.0.0.1, so one test's logins would throttle the next."""
    from django.core.cache import cache

    client = cache._cache.get_client(None, write=True)
    # And the answers cached from rows that a rolled-back test created (the alert banner, the dashboard's
    # dimensions): the rows are gone, a later test must not see them.
    for pattern in ("*throttle_login_*", "*dataflare:login-failures:*", "*alerts:banner:*", "*metrics:*"):
        keys = list(client.scan_iter(match=pattern, count=500))
        if keys:
            client.delete(*keys)


@pytest.fixture
def file_root(settings) -> Path:
    """The allowed root for file connectors in this test."""
    return settings.FILE_ROOTS[0]


# ---- Personas -------------------------------------------------------------------------------
def _persona(django_user_model, username: str, group: str | None, *, superuser: bool = False):
    from dataflare_portal.core.services import roles_ensure

    groups = roles_ensure()
    user = django_user_model.objects.create_user(
        username=username, password="pw-" + username, is_staff=group is not None, is_superuser=superuser
    )
    if group:
        user.groups.add(groups[group])
    return user


@pytest.fixture
def admin_user(db, django_user_model):
    return _persona(django_user_model, "alice-admin", "admin", superuser=True)


@pytest.fixture
def operator_user(db, django_user_model):
    return _persona(django_user_model, "oscar-operator", "operator")


@pytest.fixture
def viewer_user(db, django_user_model):
    return _persona(django_user_model, "vera-viewer", "viewer")


@pytest.fixture
def outsider_user(db, django_user_model):
    return _persona(django_user_model, "otto-outsider", None)


@pytest.fixture
def local_auth(settings):
    """Switch the portal to AUTH_MODE=local for one test."""
    settings.AUTH_MODE = "local"
    return settings


# ---- Real services --------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_url() -> str | None:
    """The Redis the tests may use (REDIS_URL), or None when the run is on the embedded default."""
    return os.environ.get("REDIS_URL") or None


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05):
    """Poll until predicate() is truthy; return its value or fail with the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


__all__ = ["free_port", "redis_url", "wait_until", "chromium_path", "subprocess"]


@pytest.fixture
def product_kinds_only(monkeypatch):
    """Only the stage kinds the product ships (built-ins and installed plug-ins) for one test.

    Test modules register their own kinds (`tasks/tests/kinds_for_tests.py`: "Test: slow" ...) in the
    process-wide registry, so a whole-suite run offers them in every kind list. Checks of what an
    operator sees (translations, form schemas) are about the product's kinds, whatever ran before.
    """
    from pipelines.stagekinds.registry import registry

    registry.kinds()  # load the built-ins and entry points first
    shipped = {name: kind for name, kind in registry._kinds.items() if ".tests." not in type(kind).__module__}
    monkeypatch.setattr(registry, "_kinds", shipped)
    return registry


@pytest.fixture
def browser():
    """Playwright driving Debian's chromium (never a downloaded browser); skips when either is missing."""
    if chromium_path() is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium_path(),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield browser
        finally:
            browser.close()


# ---- S3 and MariaDB for the connector tests ---------------------------------------------------
@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's standalone S3 server, a real HTTP server in its own process on a free loopback port.

    Yields its endpoint URL; credentials are any non-empty pair (moto checks signatures' shape only).
    """
    import sys

    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    endpoint = f"http://127.0.0.1:{port}"

    def up():
        if proc.poll() is not None:
            raise AssertionError("moto server exited: " + log.read_text(errors="replace")[-2000:])
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    wait_until(up, timeout=60, interval=0.2)
    try:
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


S3_TEST_SECRET = {"access_key_id": "AKIAEXAMPLETEST0001", "secret_access_key": "test-secret-key-not-real-0001"}


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh bucket on the moto server: (endpoint, bucket name, a boto3 client for checks)."""
    import uuid

    import boto3

    name = f"df-test-{uuid.uuid4().hex[:12]}"
    client = boto3.client(
        "s3",
        endpoint_url=s3_server,
        region_name="us-east-1",
        aws_access_key_id=S3_TEST_SECRET["access_key_id"],
        aws_secret_access_key=S3_TEST_SECRET["secret_access_key"],
    )
    client.create_bucket(Bucket=name)
    return s3_server, name, client


@pytest.fixture
def mysql_db():
    """A database of its own on the machine's MariaDB (127.0.0.1:3306, root), dropped afterwards; skips if none."""
    import uuid

    pymysql = pytest.importorskip("pymysql")
    host = os.environ.get("TEST_MYSQL_HOST", "127.0.0.1")
    name = f"df_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = pymysql.connect(host=host, user="root", autocommit=True, connect_timeout=5)
    except pymysql.Error as exc:
        pytest.skip(f"MariaDB is not reachable: {exc}")
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    admin.close()

    def execute(query, params=None):
        conn = pymysql.connect(host=host, user="root", database=name, autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute(query, params)
                return cur.fetchall() if cur.description else None
        finally:
            conn.close()

    yield {"host": host, "port": 3306, "database": name, "user": "root"}, execute
    admin = pymysql.connect(host=host, user="root", autocommit=True)
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    admin.close()
