"""Secret-looking keys in model-config parameters are stored encrypted and shown redacted everywhere."""

from __future__ import annotations

import json

import pytest
from django.db import connection

from dataflare_portal.core.models import AuditLogEntry
from pipelines.model_configs import model_config_endpoint
from pipelines.models import ModelConfig
from pipelines.secret_parameters import REDACTED, is_secret_key

SECRET = "sk-live-Very-Secret-0123456789"
NESTED = "bearer-nested-4242424242"

BODY = {
    "name": "openai-ish",
    "endpoint": "127.0.0.1:9",
    "model_name": "quality",
    "parameters": {
        "temperature": 0.2,
        "max_tokens": 64,
        "API_Key": SECRET,
        "headers": {"Authorization": NESTED, "x-trace": "on"},
        "auth": [{"refresh-token": "r3fresh-token-value"}],
    },
}


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("api_key", True),
        ("X-Api-Key", True),
        ("apikey", True),
        ("access_token", True),
        ("Password", True),
        ("client_secret", True),
        ("authorization", True),
        ("max_tokens", False),
        ("temperature", False),
        ("prompt_template", False),
    ],
)
def test_which_keys_are_secret(key, secret):
    assert is_secret_key(key) is secret


def _raw_row(pk) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {ModelConfig._meta.db_table} WHERE id = %s", [pk])  # noqa: S608
        return json.dumps([str(v) for v in cursor.fetchone()])


@pytest.mark.django_db
def test_the_api_stores_secrets_encrypted_and_shows_them_redacted(client):
    response = client.post("/api/v1/pipelines/model-configs/", BODY, content_type="application/json")
    assert response.status_code == 201, response.content
    shown = response.json()["parameters"]
    assert shown["API_Key"] == REDACTED and shown["headers"]["Authorization"] == REDACTED
    assert shown["auth"][0]["refresh-token"] == REDACTED
    assert shown["max_tokens"] == 64 and shown["headers"]["x-trace"] == "on"
    pk = response.json()["id"]
    for text in (
        client.get(f"/api/v1/pipelines/model-configs/{pk}/").content.decode(),
        _raw_row(pk),
        json.dumps(list(AuditLogEntry.objects.values("before", "after", "message"))),
        client.get(f"/pipelines/modelconfig/{pk}/change/").content.decode(),
    ):
        assert SECRET not in text and NESTED not in text and "r3fresh-token-value" not in text
    # The model call gets the real values.
    sent = model_config_endpoint(ModelConfig.objects.get(pk=pk)).parameters
    assert sent["API_Key"] == SECRET and sent["headers"]["Authorization"] == NESTED


@pytest.mark.django_db
def test_sending_the_redacted_value_back_keeps_the_secret(client):
    pk = client.post("/api/v1/pipelines/model-configs/", BODY, content_type="application/json").json()["id"]
    shown = client.get(f"/api/v1/pipelines/model-configs/{pk}/").json()["parameters"]
    shown["temperature"] = 0.7
    response = client.patch(
        f"/api/v1/pipelines/model-configs/{pk}/", {"parameters": shown}, content_type="application/json"
    )
    assert response.status_code == 200, response.content
    sent = model_config_endpoint(ModelConfig.objects.get(pk=pk)).parameters
    assert sent["API_Key"] == SECRET and sent["temperature"] == 0.7
    # A new value replaces it; removing the key removes the secret.
    shown["API_Key"] = "sk-new-value-99999"
    client.patch(f"/api/v1/pipelines/model-configs/{pk}/", {"parameters": shown}, content_type="application/json")
    assert model_config_endpoint(ModelConfig.objects.get(pk=pk)).parameters["API_Key"] == "sk-new-value-99999"
    del shown["API_Key"]
    client.patch(f"/api/v1/pipelines/model-configs/{pk}/", {"parameters": shown}, content_type="application/json")
    assert "API_Key" not in model_config_endpoint(ModelConfig.objects.get(pk=pk)).parameters


@pytest.mark.django_db
def test_a_redacted_value_with_nothing_stored_is_a_400_naming_the_path(client):
    body = {**BODY, "name": "fresh", "parameters": {"headers": {"Authorization": REDACTED}}}
    response = client.post("/api/v1/pipelines/model-configs/", body, content_type="application/json")
    assert response.status_code == 400
    assert "headers/Authorization" in response.json()["error"]["message"]
    assert not ModelConfig.objects.filter(name="fresh").exists()


@pytest.mark.django_db
def test_rotation_re_encrypts_the_secret_parameters(client, settings):
    from cryptography.fernet import Fernet

    from dataflare_portal.core.secrets import ciphertext_fields, secrets_rotate

    assert (ModelConfig, "secret_parameters_ciphertext") in ciphertext_fields()
    pk = client.post("/api/v1/pipelines/model-configs/", BODY, content_type="application/json").json()["id"]
    settings.SECRETS_ENCRYPTION_KEYS = [Fernet.generate_key().decode(), *settings.SECRETS_ENCRYPTION_KEYS]
    secrets_rotate(actor=None)
    settings.SECRETS_ENCRYPTION_KEYS = settings.SECRETS_ENCRYPTION_KEYS[:1]
    assert model_config_endpoint(ModelConfig.objects.get(pk=pk)).parameters["API_Key"] == SECRET


@pytest.mark.django_db
def test_a_partial_save_of_parameters_keeps_both_columns_together():
    config = ModelConfig.objects.create(name="partial", endpoint="127.0.0.1:9", model_name="quality")
    config.parameters = {"api_key": SECRET}
    config.save(update_fields=["parameters"])
    fresh = ModelConfig.objects.get(pk=config.pk)
    assert fresh.parameters == {"api_key": REDACTED}
    assert fresh.parameters_with_secrets() == {"api_key": SECRET}
