"""Every API route and page against the hand-written policy (permission_policy.py), on real objects.

The expected role of a route comes from the policy table, never from the view's own attributes, so a
view that lets a role do more (or less) than docs/security.md says fails here. Each persona —
anonymous, staff without a role group, viewer, operator, admin — calls every route on seeded rows:
a refused call answers 401/403, leaves no audit entry and changes nothing; an allowed update or
delete really happens, and so do the operator actions given a valid target.
"""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import models as dj_models
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from drf_spectacular.generators import EndpointEnumerator
from rest_framework.test import APIClient

from dataflare_portal.core.models import AuditLogEntry

from .permission_policy import ADMIN_MODEL_PAGE_SUFFIXES, API, PAGES, PUBLIC, RANK

PERSONAS = ("anonymous", "staff", "viewer", "operator", "admin")
WRITES = {"POST", "PUT", "PATCH", "DELETE"}


def api_routes() -> list[tuple[str, str, object]]:
    return [(method, path, cb) for path, _r, method, cb in EndpointEnumerator().get_api_endpoints()]


def page_routes() -> dict[str, object]:
    """Every named non-API URL (namespace:name) with its callback; admin model pages left out."""
    found: dict[str, object] = {}

    def walk(resolver, namespace):
        for p in resolver.url_patterns:
            if isinstance(p, URLResolver):
                ns = ":".join(x for x in (namespace, p.namespace) if x) if p.namespace else namespace
                if str(p.pattern).startswith("api/v1/"):
                    continue
                walk(p, ns)
            elif isinstance(p, URLPattern):
                if p.name is None:
                    continue  # admin's unnamed redirects and catch-all: they serve no content of their own
                if namespace == "admin" and p.name.endswith(ADMIN_MODEL_PAGE_SUFFIXES):
                    continue
                if p.name in ("schema", "swagger-ui", "redoc"):
                    continue  # in the API table
                found[f"{namespace}:{p.name}" if namespace else p.name] = p.callback

    walk(get_resolver(), "")
    return found


# ---- Every route has a written decision ---------------------------------------------------------------
def test_every_api_route_and_action_is_in_the_policy():
    routes = {(m, p) for m, p, _cb in api_routes()}
    missing = sorted(routes - set(API))
    stale = sorted(set(API) - routes)
    assert not missing, "API routes without a decision in permission_policy.API:\n" + "\n".join(map(str, missing))
    assert not stale, "permission_policy.API names routes that do not exist:\n" + "\n".join(map(str, stale))


def test_every_page_is_in_the_policy():
    pages = page_routes()
    missing = sorted(set(pages) - set(PAGES))
    stale = sorted(set(PAGES) - set(pages))
    assert not missing, "pages without a decision in permission_policy.PAGES:\n" + "\n".join(missing)
    assert not stale, "permission_policy.PAGES names pages that do not exist:\n" + "\n".join(stale)


# ---- Personas and fixtures --------------------------------------------------------------------------
def _user(persona, admin_user, operator_user, viewer_user):
    if persona == "anonymous":
        return None
    if persona == "staff":
        return get_user_model().objects.create_user(username="stan-staff", password="pw-stan", is_staff=True)
    return {"viewer": viewer_user, "operator": operator_user, "admin": admin_user}[persona]


def _allowed(persona: str, role: str) -> bool:
    return role == PUBLIC or RANK[persona] >= RANK[role]


def _last_audit() -> int:
    return AuditLogEntry.objects.order_by("-id").values_list("id", flat=True).first() or 0


def _state(model, pk):
    if model is None or pk is None:
        return []
    lookup = "key" if model._meta.label_lower == "core.systemconfig" else "pk"
    return list(model._default_manager.filter(**{lookup: pk}).values())


def _clone(obj):
    """A fresh copy of a seeded row (unique text fields get a new value) that nothing refers to."""
    model = type(obj)
    copy = model._default_manager.get(pk=obj.pk)
    copy.pk = None
    copy.id = None
    stamp = f"-pp{model._default_manager.count()}"
    for field in model._meta.concrete_fields:
        value = getattr(copy, field.attname)
        if isinstance(field, dj_models.CharField | dj_models.SlugField) and (
            field.unique or field.name in {"name", "slug", "key", "title"}
        ):
            setattr(copy, field.attname, (str(value) + stamp)[-(field.max_length or 50) :])
        elif field.name == "position":
            setattr(copy, field.attname, 1000 + model._default_manager.count())
        elif isinstance(field, dj_models.UUIDField) and field.unique and field.name != "id":
            import uuid

            setattr(copy, field.attname, uuid.uuid4())
    copy.save()
    return copy


def _pending_review_item():
    from tasks.models import ReviewItem

    return ReviewItem.objects.filter(decision="pending", lot__decision="pending").order_by("pk").first()


class Targets:
    """Real objects to call each route on; actions get a fresh target in the state they need."""

    def __init__(self):
        from alerts.tests.factories import AlertFactory, EmailChannelFactory, NotificationFactory, RunWebhookFactory
        from catalog.models import Project
        from gateway.tests.factories import seed_gateway
        from tasks.choices import RunStatus
        from tasks.models import ReviewItem, TaskRun
        from tasks.tests.factories import WorkerHeartbeatFactory

        seed_gateway()
        self.alert = AlertFactory
        self.run_in = lambda *states: TaskRun.objects.filter(status__in=states).order_by("pk").first()
        self.RunStatus = RunStatus
        self.review_item = lambda: (
            ReviewItem.objects.filter(decision="pending", lot__decision="pending").order_by("pk").first()
        )
        # Rows the demo data has none of, so every detail route is called on a real object.
        EmailChannelFactory()
        RunWebhookFactory(project=Project.objects.order_by("pk").first())
        NotificationFactory()
        WorkerHeartbeatFactory()
        from schedules.tests.factories import demo_rows, fresh_trigger

        demo_rows()
        self.fresh_trigger = fresh_trigger
        from wasmstages.services import wasm_module_upload
        from wasmstages.tests import modules

        wasm_module_upload(name="policy-echo", content=modules.binary(modules.ECHO), actor=None)

    def model_of(self, callback):
        queryset = getattr(callback.cls, "queryset", None)
        return queryset.model if queryset is not None else None

    def target(self, method: str, path: str, callback):
        """(pk as text, model) for a detail route, (None, model) for a list route."""
        model = self.model_of(callback)
        if "{key}" in path:
            from dataflare_portal.core.models import SystemConfig

            return "batch_size_default", SystemConfig
        if "{pk}" not in path:
            return None, model
        action = path.rstrip("/").rsplit("/", 1)[-1]
        obj = None
        if path.startswith("/api/v1/alerts/alerts/") and action in ("acknowledge", "resolve"):
            obj = self.alert()
        elif action == "cancel":
            obj = self.run_in(self.RunStatus.RUNNING, self.RunStatus.WAITING, self.RunStatus.PENDING)
        elif action in ("retry", "resume"):
            obj = self.run_in(self.RunStatus.FAILED, self.RunStatus.CRASHED, self.RunStatus.CANCELLED)
        elif path.startswith("/api/v1/tasks/review-items/") and action == "decide":
            obj = self.review_item()
        elif method == "DELETE" and path.startswith("/api/v1/schedules/triggers/"):
            obj = self.fresh_trigger()  # a clone would repeat its (pipeline, dataset) pair, which is unique
        elif method == "DELETE":
            obj = _clone(model._default_manager.order_by("pk").first())
        elif model is not None:
            obj = model._default_manager.order_by("pk").first()
        assert obj is not None, f"no row to call {method} {path} on: seed one"
        return str(obj.pk), type(obj)


# A body that makes the call valid, for the writes whose success this test insists on.
BODIES = {
    "/api/v1/tasks/review-items/{pk}/decide/": {"decision": "accepted"},
    "/api/v1/alerts/alerts/{pk}/acknowledge/": {"note": "policy check"},
    "/api/v1/alerts/alerts/{pk}/resolve/": {"note": "policy check"},
    "/api/v1/tasks/runs/{pk}/cancel/": {},
}


def _patch_body(client_admin, url: str) -> dict:
    shown = client_admin.get(url).json()
    if "value" in shown and "key" in shown:
        return {"value": int(shown["value"]) + 1}
    for name in ("description", "note", "name", "title"):
        if isinstance(shown.get(name), str):
            return {name: (shown[name] + "-policy")[-100:]}
    if isinstance(shown.get("enabled"), bool):
        return {"enabled": not shown["enabled"]}
    raise AssertionError(f"no text field to update on {url}: {sorted(shown)}")


# ---- The API matrix ---------------------------------------------------------------------------------
@pytest.mark.parametrize("persona", PERSONAS)
def test_every_api_route_enforces_the_written_policy_on_real_objects(
    persona, local_auth, admin_user, operator_user, viewer_user
):
    call_command("seed_demo", "--days", "1", verbosity=0)
    user = _user(persona, admin_user, operator_user, viewer_user)
    client, as_admin = APIClient(), APIClient()
    if user is not None:
        client.force_authenticate(user)
    as_admin.force_authenticate(admin_user)
    targets = Targets()
    failures: list[str] = []
    must_succeed = 0
    # Deletes last, so the other routes still find their rows.
    routes = sorted(api_routes(), key=lambda r: (r[0] == "DELETE", r[1], r[0]))
    for method, path, callback in routes:
        role = API[(method, path)]
        if path == "/api/v1/auth/token/":
            continue  # public login endpoint: covered by test_auth (rate limit, bad credentials)
        pk, model = targets.target(method, path, callback)
        url = re.sub(r"\{(pk|key)\}", pk or "", path)
        body = BODIES.get(path)
        if method in ("PATCH", "PUT") and pk is not None:
            body = _patch_body(as_admin, url)
            if method == "PUT":
                body = {**as_admin.get(url).json(), **body}
        count_before = model._default_manager.count() if model is not None else None
        before, last = _state(model, pk), _last_audit()
        if path.endswith("/diff/"):
            url += f"?against={pk}"
        if path == "/api/v1/catalog/dataset-versions/{pk}/diff/":
            _version_data(model._default_manager.get(pk=pk))
            url += "&key=id"
        call = getattr(client, method.lower())
        response = call(url, body or {}, format="json") if method in WRITES else call(url)
        status = response.status_code
        written = AuditLogEntry.objects.filter(id__gt=last).count()
        after = _state(model, pk)
        where = f"{method} {path} as {persona} (policy: {role})"
        if status >= 500 and status != 501:
            failures.append(f"{where}: {status}")
            continue
        if not _allowed(persona, role):
            wanted = (401, 403) if persona == "anonymous" else (403,)
            if status not in wanted:
                failures.append(f"{where}: answered {status}, must be refused with {wanted}")
            if written or after != before or (model is not None and model._default_manager.count() != count_before):
                failures.append(f"{where}: refused ({status}) but something was written")
            continue
        if status in (401, 403):
            failures.append(f"{where}: refused with {status}")
            continue
        if method == "GET" and status not in (200, 501):
            failures.append(f"{where}: read answered {status}")
        if method in ("PATCH", "PUT") and pk is not None:
            must_succeed += 1
            if status != 200 or after == before or not written:
                failures.append(
                    f"{where}: update did not happen ({status}, audited {written}) {response.content[:200]!r}"
                )
        if method == "DELETE":
            must_succeed += 1
            if status != 204 or after or not written:
                failures.append(f"{where}: delete did not happen ({status}) {response.content[:200]!r}")
        if path in BODIES:
            must_succeed += 1
            if not 200 <= status < 300 or after == before or not written:
                failures.append(f"{where}: action did not happen ({status}) {response.content[:200]!r}")
    if persona == "admin":
        assert must_succeed >= 30, must_succeed
    assert not failures, f"{len(failures)} policy violations:\n" + "\n".join(failures)


def _version_data(version) -> None:
    """Demo versions carry lineage, not data: give this one a file to read (download, diff)."""
    from catalog.services import _connector_for, _version_as_dataset

    path = _connector_for(_version_as_dataset(version)).path(version.location)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('{"id": 1}\n')


# ---- Pages ------------------------------------------------------------------------------------------
def _page_url(name: str) -> str | None:
    from alerts.tests.factories import AlertFactory
    from pipelines.models import ModelConfig, PipelineTemplate
    from tasks.choices import RunStatus
    from tasks.models import ReviewItem, TaskRun

    if name in ("tasks:run-detail", "tasks:run-progress"):
        return reverse(name, args=[TaskRun.objects.order_by("pk").first().pk])
    if name == "tasks:run-action":
        run = TaskRun.objects.filter(status=RunStatus.RUNNING).order_by("pk").first()
        return reverse(name, args=[run.pk, "cancel"])
    if name in ("alerts:detail", "alerts:acknowledge", "alerts:resolve"):
        return reverse(name, args=[AlertFactory().pk])
    if name == "pipelines:template-versions":
        return reverse(name, args=[PipelineTemplate.objects.order_by("pk").first().name])
    if name == "admin:pipelines_modelconfig_test":
        return reverse(name, args=[ModelConfig.objects.order_by("pk").first().pk])
    if name == "admin:tasks_reviewitem_review_item":
        return reverse(
            name,
            args=[ReviewItem.objects.filter(decision="pending", lot__decision="pending").order_by("pk").first().pk],
        )
    if name == "admin:app_list":
        return reverse(name, kwargs={"app_label": "tasks"})
    if name in ("tasks:version-detail", "tasks:version-download"):
        from catalog.models import DatasetVersion

        version = DatasetVersion.objects.filter(status="published").order_by("pk").first()
        _version_data(version)
        return reverse(name, args=[version.pk])
    if name == "admin:catalog_datasetversion_diff":
        from catalog.models import DatasetVersion

        version = DatasetVersion.objects.filter(status="published").order_by("pk").first()
        _version_data(version)
        return reverse(name, args=[version.pk]) + f"?against={version.pk}&key=id"
    if name == "admin:catalog_datasource_test":
        from catalog.models import DataSource

        return reverse(name, args=[DataSource.objects.order_by("pk").first().pk])
    if name == "admin:catalog_datasource_upload":
        from catalog.models import DataSource

        return reverse(name, args=[DataSource.objects.filter(kind="file").order_by("pk").first().pk])
    if name in ("admin:view_on_site", "admin:autocomplete"):
        return None  # admin helpers that need an object or model in the query and check its permission
    return reverse(name)


PAGE_BODIES = {
    "tasks:run-action": {"confirm": "yes"},  # cancel asks first; the policy test confirms
    "core:config": {"dashboard_refresh_seconds": "45"},
    "admin:tasks_reviewitem_review_item": {"decision": "accepted"},
    "admin:tasks_reviewitem_review": {"decision": "accepted"},
}


EFFECT_PAGES = (
    "alerts:acknowledge",
    "alerts:resolve",
    "tasks:run-action",
    "core:config",
    "admin:catalog_datasource_test",  # a connection test is audited as "run"
)


def _refused_page(response, persona) -> bool:
    """403; the admin's 404 for an app the user may not see; or a redirect (to the login page or away)."""
    return response.status_code in (403, 404) or response.status_code == 302


@pytest.mark.parametrize("persona", PERSONAS)
def test_every_page_enforces_the_written_policy(persona, client, local_auth, admin_user, operator_user, viewer_user):
    call_command("seed_demo", "--days", "1", verbosity=0)
    user = _user(persona, admin_user, operator_user, viewer_user)
    if user is not None:
        client.force_login(user)
    failures = []
    for name, methods in sorted(PAGES.items()):
        for method, role in methods.items():
            if role == PUBLIC:
                continue
            url = _page_url(name)
            if url is None:
                continue
            last = _last_audit()
            response = client.get(url) if method == "GET" else client.post(url, PAGE_BODIES.get(name, {}))
            written = AuditLogEntry.objects.filter(id__gt=last).count()
            where = f"{method} {name} ({url}) as {persona} (policy: {role})"
            if response.status_code >= 500:
                failures.append(f"{where}: {response.status_code}")
            elif not _allowed(persona, role):
                if not _refused_page(response, persona):
                    failures.append(f"{where}: answered {response.status_code}, must be refused")
                if written:
                    failures.append(f"{where}: refused but wrote {written} audit entries")
            elif method == "GET" and response.status_code != 200:
                failures.append(f"{where}: answered {response.status_code}")
            elif method == "POST" and (response.status_code in (403, 404) or "login" in response.get("Location", "")):
                failures.append(f"{where}: refused with {response.status_code}")
            elif method == "POST" and name in EFFECT_PAGES and not written:
                failures.append(f"{where}: the action did not happen ({response.status_code})")
    assert not failures, f"{len(failures)} page policy violations:\n" + "\n".join(failures)
