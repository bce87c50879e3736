"""Deployment files stay consistent with the code: compose, Dockerfile, env and config examples, scripts/dev."""

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
PORTAL_SERVICES = ("web", "worker", "beat")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def engine_queues() -> set[str]:
    """Every queue the engine routes to, plus Celery's default queue."""
    from django.conf import settings

    queues = {settings.CELERY_TASK_DEFAULT_QUEUE}
    try:
        from tasks import engine
    except ImportError:
        return queues
    return queues | {v for k, v in vars(engine).items() if k.startswith("QUEUE_") and isinstance(v, str)}


def test_compose_has_every_process_with_a_health_check(compose):
    services = compose["services"]
    assert set(services) >= {"web", "worker", "beat", "modelserver", "postgres", "redis"}
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
    assert "/healthz" in json.dumps(services["web"]["healthcheck"]["test"])


def test_compose_wires_portal_processes_to_postgres_redis_and_the_model_server(compose):
    for name in PORTAL_SERVICES:
        service = compose["services"][name]
        env = service["environment"]
        assert env["DATABASE_URL"].startswith("postgres://") and "@postgres:5432/" in env["DATABASE_URL"]
        assert env["REDIS_URL"].startswith("redis://redis:6379/")
        assert env["MODEL_SERVER_URL"] == "modelserver:8001"
        assert "modelserver" in env["ALLOWED_PRIVATE_HOSTS"]
        assert service["env_file"] == ".env"
        depends = service["depends_on"]
        assert depends["postgres"]["condition"] == depends["redis"]["condition"] == "service_healthy"
        assert "workspace:/data" in service["volumes"], f"{name} must share the workspace volume"


def test_compose_declares_named_volumes_for_database_and_workspace(compose):
    assert set(compose["volumes"]) >= {"pgdata", "workspace"}
    assert "pgdata:/var/lib/postgresql/data" in compose["services"]["postgres"]["volumes"]


def test_compose_worker_consumes_every_engine_queue(compose):
    command = compose["services"]["worker"]["command"]
    queues = set(re.search(r"-Q\s+(\S+)", command).group(1).split(","))
    assert engine_queues() <= queues


def test_compose_commands_target_code_that_exists(compose):
    services = compose["services"]
    # ASGI (uvicorn workers under gunicorn): the gateway streams from the event loop (docs/models.md).
    assert "dataflare_portal.asgi:application -k uvicorn_worker.UvicornWorker" in services["web"]["command"]
    assert "manage.py migrate" in services["web"]["command"]
    for name in ("worker", "beat"):
        assert "celery -A dataflare_portal" in services[name]["command"]
    assert "python -m modelserver" in services["modelserver"]["command"]
    for module in ("dataflare_portal.asgi", "uvicorn_worker", "dataflare_portal.celery", "modelserver.__main__"):
        assert importlib.util.find_spec(module) is not None, module


def test_dockerfile_is_multi_stage_non_root_with_static_files_and_health_check():
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM\s", text, re.M)) >= 2
    assert re.search(r"^FROM .* AS builder", text, re.M) and re.search(r"COPY --from=builder", text)
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and user[-1] not in {"root", "0"}
    assert "collectstatic" in text
    assert re.search(r"^HEALTHCHECK .*", text, re.M) and "/healthz" in text
    cmd = re.search(r"^CMD (.*)$", text, re.M).group(1)
    assert "gunicorn dataflare_portal.asgi:application -k uvicorn_worker.UvicornWorker" in cmd
    requirements = (ROOT / "requirements.txt").read_text().lower()
    assert re.search(r"^gunicorn==", requirements, re.M) and re.search(r"^whitenoise==", requirements, re.M)
    assert re.search(r"^uvicorn-worker==", requirements, re.M)
    assert importlib.util.find_spec("dataflare_portal.asgi") is not None


def test_dockerignore_keeps_local_state_and_secrets_out_of_the_image():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".env", "var/", "config.json"} <= ignored


def test_env_example_documents_every_environment_variable_settings_reads():
    read = set(
        re.findall(
            r'env\.(?:str|bool|int|float|list|db)\(\s*"([A-Z0-9_]+)"',
            (ROOT / "dataflare_portal/settings.py").read_text(),
        )
    )
    internal = {"ENV_FILE", "TEST_SQLITE_NAME"}
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M))
    missing = read - internal - documented
    assert not missing, f".env.example lacks {sorted(missing)}"


def test_env_example_changes_nothing_for_the_embedded_default():
    """A copied .env.example must behave like no .env: every settings line is commented out."""
    active = {m.group(1) for m in re.finditer(r"^([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M)}
    assert active <= {
        "POSTGRES_PASSWORD",
        "PORT",
        "WEB_CONCURRENCY",
        "CELERY_CONCURRENCY",
        "SECURE_SSL_REDIRECT",
        "SESSION_COOKIE_SECURE",
        "CSRF_COOKIE_SECURE",
    }


@pytest.mark.django_db
def test_config_example_covers_every_operational_setting():
    from dataflare_portal.core.config import registry

    example = json.loads((ROOT / "config.example.json").read_text())
    for key, setting in registry.items():
        assert key in example["_help"], f"config.example.json lacks {key}: run scripts/config_example"
        if not setting.read_only:
            assert key in example, f"config.example.json lacks {key}"
            setting.coerce(example[key])  # the example value is valid
    unknown = {k for k in example if not k.startswith("_")} - set(registry)
    assert not unknown, f"config.example.json has unknown keys {sorted(unknown)}"


def test_scripts_dev_is_valid_and_starts_every_engine_queue():
    script = (ROOT / "scripts" / "dev").read_text()
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "dev")], check=True)
    queues = set(re.search(r'^QUEUES="([^"]+)"', script, re.M).group(1).split(","))
    assert engine_queues() <= queues
    for needle in ("manage.py migrate", "manage.py seed_demo", "-m modelserver", "worker -B", "runserver", "trap "):
        assert needle in script, needle


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose (v1) is not installed")
def test_docker_compose_validates_the_file(tmp_path):
    shutil.copy(ROOT / "compose.yaml", tmp_path / "compose.yaml")
    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text())
    result = subprocess.run(
        ["docker-compose", "-f", "compose.yaml", "config", "--quiet"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
