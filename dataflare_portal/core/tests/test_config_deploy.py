"""Production settings pass `manage.py check --deploy` with no warnings; junk settings fail loudly."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.core.management.utils import get_random_secret_key

ROOT = Path(__file__).resolve().parents[3]


def _env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "DEBUG", "AUTH_MODE"}}
    env.update(
        DATA_DIR=str(tmp_path),
        DEBUG="false",
        SECRET_KEY=get_random_secret_key() + get_random_secret_key(),
        SECRETS_ENCRYPTION_KEYS=Fernet.generate_key().decode(),
        AUTH_MODE="local",
        ALLOWED_HOSTS="portal.example.com",
    )
    env.update(extra)
    return env


def _check(env):
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.integration
def test_production_settings_pass_check_deploy_without_warnings(tmp_path):
    result = _check(_env(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.integration
def test_auth_mode_none_is_refused_in_production(tmp_path):
    result = _check(_env(tmp_path, AUTH_MODE="none"))
    assert result.returncode != 0
    assert "dataflare.E002" in result.stderr + result.stdout


@pytest.mark.integration
@pytest.mark.parametrize(
    "extra,message",
    [
        ({"SECRET_KEY": ""}, "SECRET_KEY must be set"),
        ({"SECRETS_ENCRYPTION_KEYS": ""}, "SECRETS_ENCRYPTION_KEYS must be set"),
        ({"AUTH_MODE": "ldap"}, "AUTH_MODE must be"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT must be"),
    ],
)
def test_junk_production_settings_fail_at_start(tmp_path, extra, message):
    result = _check(_env(tmp_path, **extra))
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.integration
def test_a_secret_key_starting_with_a_dollar_is_taken_literally(tmp_path):
    # django-environ would resolve "$name" as another variable; Django's key alphabet includes "$".
    key = "$" + get_random_secret_key() + get_random_secret_key()
    result = _check(_env(tmp_path, SECRET_KEY=key))
    assert result.returncode == 0, result.stdout + result.stderr
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django,os;django.setup();from django.conf import settings;print(settings.SECRET_KEY)",
        ],
        cwd=ROOT,
        env={**_env(tmp_path, SECRET_KEY=key), "DJANGO_SETTINGS_MODULE": "dataflare_portal.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.stdout.strip() == key, probe.stderr
