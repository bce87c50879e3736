"""Health endpoints: /healthz (process up) and /readyz (database, broker, model services)."""

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


@never_cache
def healthz(request):
    return JsonResponse({"status": "ok"})


@never_cache
def readyz(request):
    checks = {"database": check_database, "broker": check_broker, **registry.readiness_checks}
    results, ok = {}, True
    for name, check in checks.items():
        started = time.perf_counter()
        try:
            passed, detail = check()
        except Exception as exc:  # a failing dependency is a result, not a 500
            passed, detail = False, f"{type(exc).__name__}: {exc}"
        ok = ok and passed
        results[name] = {
            "ok": passed,
            "detail": detail if settings.DEBUG or passed else detail.split(":")[0],
            "ms": round((time.perf_counter() - started) * 1000, 1),
        }
    return JsonResponse({"status": "ok" if ok else "unavailable", "checks": results}, status=200 if ok else 503)
