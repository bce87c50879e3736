"""Health endpoints: /healthz (process up) and /readyz (ready to serve; details for signed-in users).

Readiness covers only what this web process needs to serve: its database (and any registered readiness
check). The broker, model services, beat and its periodic duties, and workers are components: when one
is down the portal is *degraded*, still ready, and signed-in users with a role see which and why.
Anonymous callers learn ready or not ready, nothing else. No check here dials a user-entered address
(model endpoints report their recorded state), so /readyz cannot be turned into a probe.
"""

import time

from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache

from . import registry


def check_database() -> tuple[bool, str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return True, connection.vendor


def check_broker() -> tuple[bool, str]:
    from dataflare_portal.celery import app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
        return True, conn.transport_cls if isinstance(conn.transport_cls, str) else conn.transport.driver_type


def broker_status_check() -> dict:
    """The broker is the doorbell: while it is away the web still serves and the reaper re-sends later."""
    ok, detail = check_broker()
    return {"ok": ok, "detail": detail}


def _timed(check, shape) -> dict:
    started = time.perf_counter()
    try:
        result = shape(check())
    except Exception as exc:  # a failing dependency is a result, not a 500
        # The exception's text may name hosts or users: only DEBUG shows it.
        result = {"ok": False, "detail": f"{type(exc).__name__}: {exc}" if settings.DEBUG else type(exc).__name__}
    result["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


def _pair(answer) -> dict:
    passed, detail = answer
    return {"ok": bool(passed), "detail": detail}


def _may_see_details(request) -> bool:
    from .services import user_role

    return user_role(getattr(request, "user", None)) is not None


@never_cache
def healthz(request):
    return JsonResponse({"status": "ok"})


@never_cache
def readyz(request):
    checks = {"database": check_database, **registry.readiness_checks}
    results = {name: _timed(check, _pair) for name, check in checks.items()}
    ready = all(r["ok"] for r in results.values())
    status = 200 if ready else 503
    if not _may_see_details(request):
        return JsonResponse({"status": "ok" if ready else "unavailable"}, status=status)
    components = {name: _timed(check, dict) for name, check in registry.status_checks.items()}
    degraded = sorted(name for name, r in components.items() if not r["ok"])
    body = {
        "status": ("degraded" if degraded else "ok") if ready else "unavailable",
        "ready": ready,
        "degraded": degraded,
        "checks": results,
        "components": components,
    }
    return JsonResponse(body, status=status)
