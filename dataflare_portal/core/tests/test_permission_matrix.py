"""Admin writes over every model endpoint, generated from the URL resolver, in AUTH_MODE=local.

Who may call what is checked against the hand-written policy in test_permission_policy.py; this file
round-trips create, update and delete as admin and checks each leaves exactly one audit entry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.core.management import call_command
from django.urls import Resolver404, resolve
from drf_spectacular.generators import EndpointEnumerator
from rest_framework.test import APIClient

from dataflare_portal.core.models import AuditLogEntry

WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
DUMMY_VALUES = ("999999", "00000000-0000-0000-0000-000000000000", "zzz-missing")


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # OpenAPI style, /api/v1/x/{pk}/
    callback: object

    @property
    def view_class(self):
        return self.callback.cls

    @property
    def action(self) -> str | None:
        actions = getattr(self.callback, "actions", None)
        return actions.get(self.method.lower()) if actions else None

    def url(self, value: str | None = None) -> str:
        """The concrete URL with every path parameter set to a value the route accepts."""
        candidates = [value] if value is not None else list(DUMMY_VALUES)
        for candidate in candidates:
            url = re.sub(r"\{[^}]+\}", candidate, self.path)
            try:
                match = resolve(url)
            except Resolver404:
                continue
            if getattr(match.func, "cls", None) is self.view_class:
                return url
        raise AssertionError(f"no parameter value resolves {self.path} to {self.view_class.__name__}")

    def __str__(self) -> str:
        return f"{self.method} {self.path} ({self.view_class.__name__}.{self.action or self.method.lower()})"


def api_routes() -> list[Route]:
    routes = []
    for path, _regex, method, callback in EndpointEnumerator().get_api_endpoints():
        if path.startswith("/api/v1/"):
            routes.append(Route(method, path, callback))
    return routes


def audit_problem(route_or_model, entries: list[AuditLogEntry]) -> str | None:
    """None when a successful write was audited right, else what is wrong.

    The write's own object gets exactly one entry; derived writes (a stage save recording a new
    template version, a run creating its stage runs) may add entries about other objects, but
    nothing is audited twice.
    """
    if not entries:
        return "no audit entry"
    keys = [(e.object_type, e.object_id, e.action) for e in entries]
    if len(set(keys)) != len(keys):
        return f"audited twice: {keys}"
    model = route_or_model
    if isinstance(route_or_model, Route):
        queryset = getattr(route_or_model.view_class, "queryset", None)
        crud = route_or_model.action in {"create", "update", "partial_update", "destroy"}
        model = queryset.model if queryset is not None and crud else None
    if model is not None:
        own = [e for e in entries if e.object_type == model._meta.label_lower]
        if len(own) != 1:
            return f"{len(own)} entries for {model._meta.label_lower} (all: {keys})"
    return None


def _client(user) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


def test_the_matrix_covers_every_app():
    paths = {r.path for r in api_routes()}
    for prefix in ("/api/v1/config/", "/api/v1/audit-log/", "/api/v1/logs/", "/api/v1/auth/token/"):
        assert prefix in paths
    for app in ("catalog", "pipelines", "tasks", "metrics", "alerts"):
        assert any(p.startswith(f"/api/v1/{app}/") and p != f"/api/v1/{app}/" for p in paths), app


def _last_audit_id() -> int:
    return AuditLogEntry.objects.order_by("-id").values_list("id", flat=True).first() or 0


def _writable_copy(model, data: dict) -> dict:
    """A create payload from a GET representation: unique text fields get a new value."""
    body = {k: v for k, v in data.items() if k not in {"id", "pk", "url", "created_at", "updated_at"}}
    for field in model._meta.concrete_fields:
        if (
            field.name in body
            and isinstance(body[field.name], str)
            and (field.unique or field.name in {"name", "slug", "key"})
        ):
            body[field.name] = (body[field.name] + "-mx")[: field.max_length or 200]
    return body


def test_admin_writes_succeed_with_exactly_one_audit_entry(local_auth, admin_user):
    """Round-trip every model endpoint: create a copy of a seeded row, update it, delete it."""
    call_command("seed_demo", "--days", "1", verbosity=0)
    client = _client(admin_user)
    by_path: dict[str, dict[str, Route]] = {}
    for route in api_routes():
        by_path.setdefault(route.path, {})[route.method] = route
    failures, done = [], {"create": 0, "update": 0, "delete": 0}
    for path, methods in sorted(by_path.items()):
        create = methods.get("POST")
        if create is None or create.action != "create":
            continue
        view = create.view_class
        queryset = getattr(view, "queryset", None)
        if queryset is None:
            continue
        model = queryset.model
        seeded = model._default_manager.order_by("pk").first()
        if seeded is None:
            continue
        detail_path = path + "{pk}/"
        detail = by_path.get(detail_path, {})
        if "GET" not in detail:
            continue
        shown = client.get(detail["GET"].url(str(seeded.pk)))
        if shown.status_code != 200:
            failures.append(f"GET {detail_path} of a seeded row: {shown.status_code}")
            continue
        body = _writable_copy(model, shown.json())
        last = _last_audit_id()
        created = client.post(create.url(), body, format="json")
        entries = list(AuditLogEntry.objects.filter(id__gt=last))
        written = len(entries)
        if created.status_code >= 500:
            failures.append(f"POST {path}: {created.status_code}")
            continue
        if created.status_code != 201:
            if written:
                failures.append(f"POST {path} refused ({created.status_code}) but wrote {written} audit entries")
            continue  # the representation is not a valid create payload (write-only or nested fields)
        if problem := audit_problem(model, entries):
            failures.append(f"POST {path}: {problem}")
        done["create"] += 1
        new_pk = str(created.json().get("id", created.json().get("pk", "")))
        if "PATCH" in detail and new_pk:
            last = _last_audit_id()
            patch_body = {k: v for k, v in body.items() if k in {"description", "name"}} or body
            updated = client.patch(detail["PATCH"].url(new_pk), patch_body, format="json")
            entries = list(AuditLogEntry.objects.filter(id__gt=last))
            problem = audit_problem(model, entries) if updated.status_code == 200 else (entries and "audited a refusal")
            if updated.status_code >= 500 or problem:
                failures.append(f"PATCH {detail_path}: {updated.status_code}: {problem}")
            done["update"] += updated.status_code == 200
        if "DELETE" in detail and new_pk:
            last = _last_audit_id()
            deleted = client.delete(detail["DELETE"].url(new_pk))
            entries = list(AuditLogEntry.objects.filter(id__gt=last))
            if deleted.status_code != 204 or (problem := audit_problem(model, entries)):
                failures.append(f"DELETE {detail_path}: {deleted.status_code}: {audit_problem(model, entries)}")
            done["delete"] += deleted.status_code == 204
    assert not failures, "\n".join(failures)
    # The config endpoint is a typed (non-model) write: one audit entry per change too.
    before = AuditLogEntry.objects.count()
    assert client.patch("/api/v1/config/batch_size_default/", {"value": 64}, format="json").status_code == 200
    assert AuditLogEntry.objects.count() - before == 1
    assert done["create"] >= 3 and done["delete"] >= 3, done
