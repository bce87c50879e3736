"""Secrets at rest: encryption, rotation, and no clear text in database dumps, logs or the audit log."""

import io
import json
import logging
import shutil
import subprocess

import pytest
from cryptography.fernet import Fernet
from django.apps import apps
from django.core.management import call_command
from django.db import connection

from dataflare_portal.core.logging import REDACTED, redact
from dataflare_portal.core.models import AuditLogEntry
from dataflare_portal.core.secrets import (
    SecretDecryptError,
    ciphertext_fields,
    decrypt_secret,
    encrypt_secret,
    secrets_rotate,
)

PASSWORD = "S3cr3t-pg-pass-XYZ"
TOKEN = "tok_ABCDEF1234567890"
SIGNING = "whsec_signing_987654"


def test_it_round_trips_and_keeps_empty_empty():
    token = encrypt_secret("hunter2-long")
    assert token != "hunter2-long" and token.startswith("gAAAAA")
    assert decrypt_secret(token) == "hunter2-long"
    assert encrypt_secret("") == "" and decrypt_secret("") == ""


def test_it_refuses_ciphertext_from_unknown_keys(settings):
    foreign = Fernet(Fernet.generate_key()).encrypt(b"x").decode()
    with pytest.raises(SecretDecryptError):
        decrypt_secret(foreign)


def test_it_finds_every_ciphertext_column():
    found = {(m._meta.label, name) for m, name in ciphertext_fields()}
    assert ("catalog.DataSource", "secret_ciphertext") in found
    assert ("alerts.NotificationChannel", "secret_ciphertext") in found


def _seed():
    Project = apps.get_model("catalog", "Project")
    DataSource = apps.get_model("catalog", "DataSource")
    Channel = apps.get_model("alerts", "NotificationChannel")
    project = Project.objects.create(name="Secrets", slug="secrets")
    source = DataSource.objects.create(
        project=project,
        name="warehouse",
        kind="postgresql",
        config={"host": "db.example.com", "database": "wh", "user": "etl"},
        secret_ciphertext=encrypt_secret(json.dumps({"password": PASSWORD, "token": TOKEN})),
    )
    channel = Channel.objects.create(
        name="hook", kind="webhook", target="https://hooks.example.com/x", secret_ciphertext=encrypt_secret(SIGNING)
    )
    apps.get_model("alerts", "RunWebhook").objects.create(
        project=project, name="runs", target="https://hooks.example.com/runs", secret_ciphertext=encrypt_secret(SIGNING)
    )
    return source, channel


def _assert_clean(text: str, where: str):
    for secret in (PASSWORD, TOKEN, SIGNING):
        assert secret not in text, f"{secret} in clear in {where}"


def _raw_sql_dump() -> str:
    if connection.vendor == "postgresql":
        if not shutil.which("pg_dump"):
            pytest.skip("pg_dump is not installed")
        params = connection.get_connection_params()
        cmd = ["pg_dump", "--data-only", "-h", params.get("host") or "127.0.0.1", "-p", str(params.get("port") or 5432)]
        cmd += ["-U", params.get("user") or "postgres", params["dbname"]]
        env = {"PGPASSWORD": params.get("password") or "", "PATH": "/usr/bin:/bin"}
        return subprocess.run(cmd, capture_output=True, text=True, check=True, env=env, timeout=120).stdout
    connection.ensure_connection()
    return "\n".join(connection.connection.iterdump())


@pytest.mark.django_db(transaction=True)
def test_database_dumps_and_logs_hold_no_clear_secret(admin_user):
    source, channel = _seed()
    # An audited write of both rows: the audit log must leave the secrets out too.
    from dataflare_portal.core.services import object_save

    object_save(actor=admin_user, instance=source)
    object_save(actor=admin_user, instance=channel)
    assert decrypt_secret(source.secret_ciphertext) == json.dumps({"password": PASSWORD, "token": TOKEN})

    out = io.StringIO()
    call_command("dumpdata", stdout=out)
    dump = out.getvalue()
    assert source.secret_ciphertext in dump  # the encrypted value is there, the clear one is not
    _assert_clean(dump, "dumpdata")
    raw = _raw_sql_dump()
    assert "warehouse" in raw
    _assert_clean(raw, "raw SQL dump")
    _assert_clean(json.dumps(list(AuditLogEntry.objects.values()), default=str), "audit log")

    # Logs: even a careless log line with the secret in it comes out masked.
    handler = next(
        h for h in logging.getLogger().handlers if any(type(f).__name__ == "RedactSecretsFilter" for f in h.filters)
    )
    stream, old = io.StringIO(), handler.stream
    handler.setStream(stream)
    try:
        log = logging.getLogger("dataflare.test")
        log.warning("connecting with %s", decrypt_secret(source.secret_ciphertext))
        log.warning("password=%s token: %s", PASSWORD, TOKEN)
        try:
            raise RuntimeError(f"auth failed for {SIGNING}")
        except RuntimeError:
            log.exception("webhook failed")
    finally:
        handler.setStream(old)
    logged = stream.getvalue()
    assert "connecting with" in logged and REDACTED in logged and "webhook failed" in logged
    _assert_clean(logged, "logs")


def test_redact_masks_secret_shapes_it_never_saw():
    text = redact("password=abc123def url=postgres://bob:pa55word@db/x Authorization: Bearer abcdefghijklmnop")
    assert "abc123def" not in text and "pa55word" not in text and "abcdefghijklmnop" not in text
    assert "postgres://bob:" in text and "@db/x" in text


@pytest.mark.django_db
def test_rotation_re_encrypts_everything_and_keeps_it_readable(settings):
    source, channel = _seed()
    old_key = settings.SECRETS_ENCRYPTION_KEYS[0]
    new_key = Fernet.generate_key().decode()
    settings.SECRETS_ENCRYPTION_KEYS = [new_key, old_key]
    out = io.StringIO()
    call_command("rotate_secrets", stdout=out)
    assert "3 secret(s) re-encrypted" in out.getvalue()
    source.refresh_from_db()
    channel.refresh_from_db()
    settings.SECRETS_ENCRYPTION_KEYS = [new_key]  # the old key can now be dropped
    assert json.loads(decrypt_secret(source.secret_ciphertext))["password"] == PASSWORD
    assert decrypt_secret(channel.secret_ciphertext) == SIGNING
    webhook = apps.get_model("alerts", "RunWebhook").objects.get(name="runs")
    assert decrypt_secret(webhook.secret_ciphertext) == SIGNING
    entries = AuditLogEntry.objects.filter(action="rotate")
    assert entries.count() == len(ciphertext_fields())
    rotated = {e.object_type: e.after["rotated"] for e in entries}
    assert rotated.pop("pipelines.modelconfig") == 0  # no model config with secret parameters seeded
    assert set(rotated.values()) == {1}


@pytest.mark.django_db
def test_rotation_stops_on_a_secret_no_key_can_read(settings):
    source, _ = _seed()
    settings.SECRETS_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(SecretDecryptError):
        secrets_rotate(actor="test")
