"""The Kubernetes manifests (deploy/kubernetes) are valid API objects and agree with the code.

Every object validates against the Kubernetes API schemas (kubernetes-validate, strict: an unknown or
misspelt field fails) for the oldest and newest versions we support. Then the drift checks: every
environment variable a manifest sets is one the settings or the image's commands read, probe paths
resolve to the health views, ports match the Dockerfile and the processes' own commands, every engine
queue has a worker, and the secrets come from a Secret, never from a ConfigMap.
"""

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from django.urls import resolve

from dataflare_portal.core import health

from .test_deploy_files import engine_queues

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "kubernetes"
VERSIONS = ("1.30.0", "1.37.0")  # the oldest supported release, and the newest schemas we have
SECRET_NAMES = {"SECRET_KEY", "SECRETS_ENCRYPTION_KEYS", "DATABASE_URL", "REDIS_URL", "OIDC_CLIENT_SECRET"}
# Read by the image's commands (gunicorn, celery, sh), not by the settings.
PROCESS_VARIABLES = {"PORT", "WEB_CONCURRENCY", "CELERY_CONCURRENCY", "FORWARDED_ALLOW_IPS"}


def _objects() -> list[tuple[str, dict]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


OBJECTS = _objects()


def _by_kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in OBJECTS if doc["kind"] == kind}


def _pod_specs() -> dict[str, dict]:
    specs = {name: doc["spec"]["template"]["spec"] for name, doc in _by_kind("Deployment").items()}
    specs |= {name: doc["spec"]["template"]["spec"] for name, doc in _by_kind("Job").items()}
    return specs


def _containers():
    for name, spec in _pod_specs().items():
        for container in spec.get("initContainers", []) + spec["containers"]:
            yield name, container


def _settings_variables() -> set[str]:
    text = (ROOT / "dataflare_portal" / "settings.py").read_text()
    return set(re.findall(r'(?:env\.(?:str|bool|int|float|list|db)|_secret)\(\s*"([A-Z0-9_]+)"', text))


def test_the_kustomization_lists_every_manifest():
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "index", range(len(OBJECTS)), ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in OBJECTS]
)
def test_every_object_validates_against_the_kubernetes_schemas(index, version):
    _, doc = OBJECTS[index]
    kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError naming the field


def test_a_misspelt_field_fails_the_validation():
    _, doc = next(item for item in OBJECTS if item[1]["kind"] == "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(doc))
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"httpGet": {"path": "/healthz"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_every_environment_variable_is_one_the_portal_reads():
    known = _settings_variables() | PROCESS_VARIABLES
    configmap = _by_kind("ConfigMap")["dataflare-config"]["data"]
    assert not set(configmap) - known, f"unknown variables {sorted(set(configmap) - known)}"
    for name, container in _containers():
        direct = {e["name"] for e in container.get("env", [])}
        assert not direct - known, (name, sorted(direct - known))
        # ${VAR} in a command must be set for that container.
        command = " ".join(container.get("command", []) + container.get("args", []))
        refs = set(re.findall(r"\$\{([A-Z0-9_]+)\}", command)) - {"HOSTNAME"}
        assert refs <= direct | set(configmap), (name, sorted(refs - direct - set(configmap)))


def test_secrets_come_from_a_secret_and_every_portal_container_gets_both_sources():
    configmap = _by_kind("ConfigMap")["dataflare-config"]["data"]
    assert not SECRET_NAMES & set(configmap)
    assert _settings_variables() >= SECRET_NAMES
    for name, container in _containers():
        if name == "dataflare-modelserver":
            continue
        sources = container.get("envFrom", [])
        assert {"configMapRef": {"name": "dataflare-config"}} in sources, name
        assert {"secretRef": {"name": "dataflare-secrets"}} in sources, name


def test_probes_call_the_health_views_on_the_served_port():
    dockerfile = (ROOT / "Dockerfile").read_text()
    exposed = {int(p) for p in re.search(r"^EXPOSE (.+)$", dockerfile, re.M).group(1).split()}
    web = _pod_specs()["dataflare-web"]["containers"][0]
    port = web["ports"][0]["containerPort"]
    assert port in exposed
    assert _by_kind("ConfigMap")["dataflare-config"]["data"]["PORT"] == str(port)
    assert "--bind 0.0.0.0:${PORT}" in " ".join(web["command"])
    views = {"/healthz": health.healthz, "/readyz": health.readyz}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        path = web[probe]["httpGet"]["path"]
        assert resolve(path).func is views[path], (probe, path)
        assert web[probe]["httpGet"]["port"] == web["ports"][0]["name"]
    assert web["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert web["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # The probe middleware answers these paths before host validation: it must stay installed.
    from django.conf import settings

    assert "dataflare_portal.core.middleware.ProbeMiddleware" in settings.MIDDLEWARE
    model = _pod_specs()["dataflare-modelserver"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in model["ports"]}
    assert set(ports.values()) <= exposed
    assert f"--http-port {ports['http']}" in " ".join(model["command"])
    service_ports = {p["targetPort"]: p["port"] for p in _by_kind("Service")["dataflare-modelserver"]["spec"]["ports"]}
    assert service_ports == {"grpc": ports["grpc"], "http": ports["http"]}
    assert model["livenessProbe"]["grpc"]["port"] == model["ports"][0]["containerPort"]
    assert f"--port {model['ports'][0]['containerPort']}" in " ".join(model["command"])
    configured = _by_kind("ConfigMap")["dataflare-config"]["data"]["MODEL_SERVER_URL"]
    service = _by_kind("Service")["dataflare-modelserver"]
    assert configured == f"{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"


def test_every_engine_queue_has_a_worker_deployment_that_scales_on_its_own():
    queues = {}
    for name, container in _containers():
        command = " ".join(container["command"])
        if " worker " in command:
            queues[re.search(r"-Q (\S+)", command).group(1)] = name
    assert set(queues) >= engine_queues()
    scaled = {doc["spec"]["scaleTargetRef"]["name"] for doc in _by_kind("HorizontalPodAutoscaler").values()}
    assert set(queues.values()) <= scaled


def test_one_beat_replaced_without_overlap_and_a_migration_job():
    beat = _by_kind("Deployment")["dataflare-beat"]
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"]["type"] == "Recreate"
    job = _pod_specs()["dataflare-migrate"]["containers"][0]
    assert job["command"] == ["python", "manage.py", "migrate", "--noinput"]
    init = _pod_specs()["dataflare-web"]["initContainers"][0]
    assert "manage.py migrate --check" in " ".join(init["command"])


def test_every_portal_pod_shares_the_workspace_and_runs_locked_down():
    claim = _by_kind("PersistentVolumeClaim")["dataflare-workspace"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    uid = int(re.search(r"--uid (\d+)", dockerfile).group(1))
    data_dir = _by_kind("ConfigMap")["dataflare-config"]["data"]["DATA_DIR"]
    for name, spec in _pod_specs().items():
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == uid
        for container in spec.get("initContainers", []) + spec["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert container["resources"]["requests"] and container["resources"]["limits"], name
        if name in {"dataflare-web", "dataflare-migrate"} or name.startswith("dataflare-worker-"):
            claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in spec["volumes"]}
            mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
            assert claims[mounts[data_dir]] == "dataflare-workspace", name
