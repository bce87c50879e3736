"""Settings switches: each case imports the settings in a fresh interpreter with a controlled environment."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.checks import run_checks

ROOT = Path(__file__).resolve().parents[3]
PROBE = """
import json
from django.conf import settings
db = settings.DATABASES["default"]
print(json.dumps({
    "engine": db["ENGINE"], "name": str(db["NAME"]), "host": db.get("HOST", ""),
    "broker": settings.CELERY_BROKER_URL, "cache": settings.CACHES["default"]["BACKEND"],
    "cache_location": str(settings.CACHES["default"].get("LOCATION", "")),
    "debug": settings.DEBUG, "static": settings.STORAGES["staticfiles"]["BACKEND"],
    "auth_mode": settings.AUTH_MODE, "language": settings.LANGUAGE_CODE,
}))
"""
SWITCHES = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "DEBUG", "SECRET_KEY", "SECRETS_ENCRYPTION_KEYS")


def probe(tmp_path, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in SWITCHES and not k.startswith("PORTAL_")}
    clean.update(
        DJANGO_SETTINGS_MODULE="dataflare_portal.settings",
        DATA_DIR=str(tmp_path / "data"),
        ENV_FILE=str(tmp_path / "no.env"),  # a developer's .env must not leak into the case
        PYTHONPATH=str(ROOT),
    )
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=60
    )


def settings_with(tmp_path, **env) -> dict:
    result = probe(tmp_path, **env)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_it_runs_on_the_embedded_default_with_no_configuration(tmp_path):
    s = settings_with(tmp_path)
    assert s["engine"] == "django.db.backends.sqlite3"
    assert s["name"] == str(tmp_path / "data" / "portal.sqlite3")
    assert s["broker"].startswith("sqla+sqlite:///") and s["broker"].endswith("broker.sqlite3")
    assert s["cache"] == "django.core.cache.backends.filebased.FileBasedCache"
    assert s["auth_mode"] == "none"
    assert (tmp_path / "data").is_dir()


def test_it_switches_to_postgresql_and_redis_by_environment(tmp_path):
    s = settings_with(
        tmp_path,
        DATABASE_URL="postgres://portal:pw@db.internal:5433/dataflare",
        REDIS_URL="redis://127.0.0.1:6379/3",
    )
    assert s["engine"] == "django.db.backends.postgresql"
    assert (s["name"], s["host"]) == ("dataflare", "db.internal")
    assert s["broker"] == "redis://127.0.0.1:6379/3"
    assert s["cache"] == "dataflare_portal.core.cache.RedisCache"
    assert s["cache_location"] == "redis://127.0.0.1:6379/3"


def test_it_takes_a_separate_broker_over_redis_url(tmp_path):
    s = settings_with(tmp_path, REDIS_URL="redis://127.0.0.1:6379/3", CELERY_BROKER_URL="amqp://guest@mq:5672//")
    assert s["broker"] == "amqp://guest@mq:5672//"
    assert s["cache"] == "dataflare_portal.core.cache.RedisCache"


def test_it_refuses_to_start_without_a_secret_key_when_debug_is_off(tmp_path):
    result = probe(tmp_path, DEBUG="false")
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_it_refuses_to_start_without_encryption_keys_when_debug_is_off(tmp_path):
    result = probe(tmp_path, DEBUG="false", SECRET_KEY="x" * 50)
    assert result.returncode != 0
    assert "SECRETS_ENCRYPTION_KEYS" in result.stderr


def test_it_uses_production_static_storage_when_debug_is_off(tmp_path):
    s = settings_with(
        tmp_path,
        DEBUG="false",
        SECRET_KEY="x" * 50,
        SECRETS_ENCRYPTION_KEYS="ZGF0YWZsYXJlLWJ1aWxkLW9ubHktZHVtbXkta2V5ISE=",
    )
    assert s["debug"] is False
    assert s["static"] == "whitenoise.storage.CompressedManifestStaticFilesStorage"


def test_it_rejects_an_unknown_auth_mode(tmp_path):
    result = probe(tmp_path, AUTH_MODE="ldap")
    assert result.returncode != 0
    assert "AUTH_MODE" in result.stderr


def test_it_reads_the_env_file(tmp_path):
    env_file = tmp_path / "portal.env"
    env_file.write_text("LANGUAGE_CODE=zh-hans\nAUTH_MODE=local\n")
    s = settings_with(tmp_path, ENV_FILE=str(env_file))
    assert (s["language"], s["auth_mode"]) == ("zh-hans", "local")


def _check_ids(settings) -> set[str]:
    return {m.id for m in run_checks(include_deployment_checks=False)}


def test_system_check_refuses_auth_mode_none_beyond_loopback(settings):
    settings.AUTH_MODE = "none"
    settings.BIND_ADDRESS = "0.0.0.0"  # noqa: S104 (the case under test)
    assert "dataflare.E001" in _check_ids(settings)


@pytest.mark.parametrize("address", ["127.0.0.1", "localhost", "::1", "[::1]"])
def test_system_check_accepts_auth_mode_none_on_loopback(settings, address):
    settings.AUTH_MODE = "none"
    settings.BIND_ADDRESS = address
    assert "dataflare.E001" not in _check_ids(settings)


def test_system_check_accepts_local_auth_anywhere(settings):
    settings.AUTH_MODE = "local"
    settings.BIND_ADDRESS = "0.0.0.0"  # noqa: S104
    assert "dataflare.E001" not in _check_ids(settings)


def test_manage_check_fails_on_auth_mode_none_beyond_loopback(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in SWITCHES}
    env.update(DATA_DIR=str(tmp_path), ENV_FILE=str(tmp_path / "no.env"), BIND_ADDRESS="0.0.0.0", AUTH_MODE="none")  # noqa: S104
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "dataflare.E001" in result.stderr + result.stdout
