"""System config: layers, validation, audit, cross-process invalidation, the page and the API."""

import json

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from dataflare_portal.core import config
from dataflare_portal.core.config import ConfigError, config_all, config_get, config_reset, config_set
from dataflare_portal.core.models import AuditLogEntry, SystemConfig


def _source(key):
    return next(r["source"] for r in config_all() if r["key"] == key)


def test_it_layers_default_env_file_and_database(db, settings, admin_user):
    assert config_get("dashboard_refresh_seconds") == 60
    assert _source("dashboard_refresh_seconds") == "default"
    settings.CONFIG_ENV = {"dashboard_refresh_seconds": "20"}
    assert config_get("dashboard_refresh_seconds") == 20
    assert _source("dashboard_refresh_seconds") == "env"
    settings.CONFIG_FILE.write_text(json.dumps({"dashboard_refresh_seconds": 30}))
    assert config_get("dashboard_refresh_seconds") == 30
    assert _source("dashboard_refresh_seconds") == "file"
    config_set(key="dashboard_refresh_seconds", value=40, actor=admin_user)
    assert config_get("dashboard_refresh_seconds") == 40
    assert _source("dashboard_refresh_seconds") == "database"
    config_reset(key="dashboard_refresh_seconds", actor=admin_user)
    assert config_get("dashboard_refresh_seconds") == 30


def test_it_skips_an_invalid_layer_instead_of_failing(db, settings):
    settings.CONFIG_FILE.write_text(json.dumps({"dashboard_refresh_seconds": "soon", "raw_retention_days": 0}))
    assert config_get("dashboard_refresh_seconds") == 60
    assert config_get("raw_retention_days") == 7
    settings.CONFIG_FILE.write_text("{broken")
    assert config_get("raw_retention_days") == 7


def test_it_reads_env_settings_named_by_a_setting(db, settings):
    settings.MODEL_SERVER_URL = "models.internal:9000"
    assert config_get("model_endpoint_default") == "models.internal:9000"
    settings.AUTH_MODE = "local"
    assert config_get("auth_mode") == "local"


@pytest.mark.parametrize(
    "key,value,fragment",
    [
        ("dashboard_refresh_seconds", 1, "at least"),
        ("dashboard_refresh_seconds", "ten", "integer"),
        ("dashboard_refresh_seconds", 2.5, "integer"),
        ("dashboard_refresh_seconds", True, "integer"),
        ("history_default_window", "2y", "Choose one of"),
        ("alert_error_rate_warning_pct", 101, "at most"),
        ("model_endpoint_default", "no port", "host:port"),
        ("model_endpoint_default", 8001, "host:port"),
    ],
)
def test_it_refuses_invalid_values_naming_the_key(db, admin_user, key, value, fragment):
    with pytest.raises(ConfigError) as info:
        config_set(key=key, value=value, actor=admin_user)
    assert fragment in " ".join(info.value.message_dict[key])
    assert not SystemConfig.objects.exists()
    assert not AuditLogEntry.objects.exists()


def test_it_keeps_read_only_settings_out_of_the_database(db, admin_user):
    with pytest.raises(ConfigError):
        config_set(key="auth_mode", value="local", actor=admin_user)
    SystemConfig.objects.create(key="auth_mode", value="local")  # a stray row must not win either
    assert config_get("auth_mode") == "none"


def test_it_audits_every_change_with_before_and_after(db, admin_user):
    config_set(key="raw_retention_days", value="30", actor=admin_user)
    entry = AuditLogEntry.objects.get()
    assert entry.action == "config" and entry.actor == admin_user
    assert entry.before == {"value": 7, "override": None}
    assert entry.after == {"value": 30, "override": 30}
    assert SystemConfig.objects.get(key="raw_retention_days").updated_by == admin_user


def test_it_bumps_the_shared_version_so_other_processes_reload(transactional_db, admin_user):
    before = cache.get(config.VERSION_CACHE_KEY) or 0
    assert config_get("raw_retention_days") == 7  # memoised now (no transaction open)
    # Another process writes the row directly and bumps the version, as config_set() does there.
    SystemConfig.objects.create(key="raw_retention_days", value=90)
    assert config_get("raw_retention_days") == 7  # still the memo: the version did not move
    config._bump_version()
    assert cache.get(config.VERSION_CACHE_KEY) == before + 1
    assert config_get("raw_retention_days") == 90


# ---- API ------------------------------------------------------------------------------------
@pytest.fixture
def client_as(local_auth):
    def make(user):
        client = APIClient()
        if user is not None:
            client.force_authenticate(user)
        return client

    return make


def test_api_lists_effective_values_and_sources(client_as, viewer_user, settings):
    settings.CONFIG_FILE.write_text(json.dumps({"raw_retention_days": 3}))
    rows = {r["key"]: r for r in client_as(viewer_user).get("/api/v1/config/").json()}
    assert rows["raw_retention_days"]["value"] == 3 and rows["raw_retention_days"]["source"] == "file"
    assert rows["auth_mode"]["read_only"] is True and rows["auth_mode"]["value"] == "local"
    assert rows["dashboard_refresh_seconds"]["minimum"] == 2
    only_file = client_as(viewer_user).get("/api/v1/config/?source=file").json()
    assert [r["key"] for r in only_file] == ["raw_retention_days"]


def test_api_sets_and_resets_a_value_as_admin_only(client_as, admin_user, operator_user, viewer_user):
    url = "/api/v1/config/history_default_window/"
    assert client_as(None).patch(url, {"value": "7d"}, format="json").status_code == 401
    assert client_as(viewer_user).patch(url, {"value": "7d"}, format="json").status_code == 403
    assert client_as(operator_user).patch(url, {"value": "7d"}, format="json").status_code == 403
    response = client_as(admin_user).patch(url, {"value": "7d"}, format="json")
    assert response.status_code == 200
    assert response.json()["value"] == "7d" and response.json()["source"] == "database"
    assert config_get("history_default_window") == "7d"
    response = client_as(admin_user).put(url, {"value": None}, format="json")
    assert response.json()["source"] == "default"
    assert AuditLogEntry.objects.filter(action="config").count() == 2


def test_api_refuses_read_only_and_invalid_values(client_as, admin_user):
    response = client_as(admin_user).patch("/api/v1/config/auth_mode/", {"value": "none"}, format="json")
    assert response.status_code == 400 and "auth_mode" in response.json()["error"]["fields"]
    response = client_as(admin_user).patch("/api/v1/config/raw_retention_days/", {}, format="json")
    assert response.status_code == 400 and "value" in response.json()["error"]["fields"]


# ---- Page -----------------------------------------------------------------------------------
def test_page_shows_every_setting_with_its_source(client, local_auth, viewer_user):
    client.force_login(viewer_user)
    response = client.get("/system/config/")
    assert response.status_code == 200
    html = response.content.decode()
    for key in config.registry:
        assert f'data-key="{key}"' in html
    assert "Only the admin role can change settings." in html
    response = client.post("/system/config/", {"raw_retention_days": "9"})
    assert response.status_code == 302 and config_get("raw_retention_days") == 7


def test_page_saves_changes_and_shows_errors_per_field(client, local_auth, admin_user):
    client.force_login(admin_user)
    form = {r["key"]: r["value"] for r in config_all() if not r["setting"].read_only}
    form.update(raw_retention_days="30", dashboard_refresh_seconds="1")
    response = client.post("/system/config/", form)
    assert response.status_code == 400
    html = response.content.decode()
    assert "Ensure this value is greater than or equal to 2" in html
    assert config_get("raw_retention_days") == 7  # nothing saved from an invalid form
    form["dashboard_refresh_seconds"] = "5"
    response = client.post("/system/config/", form)
    assert response.status_code == 302
    assert config_get("raw_retention_days") == 30 and config_get("dashboard_refresh_seconds") == 5
    assert AuditLogEntry.objects.filter(action="config").count() == 2
    form["raw_retention_days__reset__"] = "on"
    client.post("/system/config/", form)
    assert config_get("raw_retention_days") == 7


def test_page_redirects_anonymous_users_to_login(client, local_auth, db):
    response = client.get("/system/config/")
    assert response.status_code == 302 and "/login/" in response["Location"]
