"""The API's one error shape, for every kind of error, and the reserved endpoints."""

import pytest
from django.db.models import ProtectedError
from rest_framework.test import APIClient

from dataflare_portal.core.api.exceptions import exception_handler
from dataflare_portal.core.models import AuditLogEntry


def assert_error_shape(response, status):
    assert response.status_code == status, response.content[:500]
    body = response.json()
    assert set(body) == {"error", "request_id"}
    assert body["error"]["status"] == status
    assert body["error"]["code"] and body["error"]["message"]
    assert body["request_id"] == response["X-Request-ID"]
    return body["error"]


@pytest.fixture
def api(db):
    return APIClient()


def test_it_answers_malformed_json_with_400_naming_the_problem(api):
    response = api.patch("/api/v1/config/dashboard_refresh_seconds/", data="{not json", content_type="application/json")
    error = assert_error_shape(response, 400)
    assert error["code"] == "parse_error"
    assert "JSON" in error["message"]


def test_it_answers_unknown_objects_and_urls_with_404(api):
    assert_error_shape(api.get("/api/v1/audit-log/999999/"), 404)
    assert_error_shape(api.get("/api/v1/config/no_such_key/"), 404)
    error = assert_error_shape(api.get("/api/v1/no-such-endpoint/"), 404)
    assert error["code"] == "not_found"


def test_it_answers_wrong_methods_with_405(api):
    error = assert_error_shape(api.delete("/api/v1/audit-log/"), 405)
    assert "DELETE" in error["message"]


def test_it_answers_unsupported_media_with_415(api):
    response = api.patch("/api/v1/config/dashboard_refresh_seconds/", data="value=3", content_type="text/plain")
    assert_error_shape(response, 415)


def test_it_answers_oversized_bodies_with_413(api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = '{"value": "' + "x" * 5000 + '"}'
    response = api.patch("/api/v1/config/dashboard_refresh_seconds/", data=body, content_type="application/json")
    assert_error_shape(response, 413)


def test_it_names_the_field_in_validation_errors(api):
    response = api.patch("/api/v1/config/dashboard_refresh_seconds/", {"value": 1}, format="json")
    error = assert_error_shape(response, 400)
    assert "dashboard_refresh_seconds" in error["fields"]
    assert error["message"].startswith("dashboard_refresh_seconds:")


def test_it_answers_a_protected_delete_with_409(db, django_user_model):
    user = django_user_model.objects.create_user("someone")
    entry = AuditLogEntry.objects.create(actor=user, actor_name="someone", action="create", object_type="x")
    response = exception_handler(ProtectedError("protected", {entry}), {})
    assert response.status_code == 409
    assert response.data["error"]["code"] == "conflict"
    assert "audit log entry" in response.data["error"]["message"]


def test_it_reserves_the_logs_endpoint_with_501(api):
    error = assert_error_shape(api.get("/api/v1/logs/"), 501)
    assert error["code"] == "not_implemented"
    assert "reserved" in error["message"]


def test_it_lists_every_section_at_the_api_root(api):
    body = api.get("/api/v1/").json()
    assert {"catalog", "pipelines", "tasks", "metrics", "alerts", "system", "logs", "token"} <= set(body)


def test_it_serves_docs_from_our_own_static_files(api):
    for url in ("/api/docs/", "/api/redoc/"):
        response = api.get(url)
        assert response.status_code == 200
        html = response.content.decode()
        import re

        sources = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert sources, url
        for src in sources:
            # Swagger's start-up script is served by the page itself (split view, no inline script for the CSP).
            assert src.startswith(("/static/", "/api/schema/", "/api/docs/?script")), (url, src)
        assert not re.search(r"\bcdn[.\-/]", html, re.IGNORECASE)  # not a bare "cdn": random tokens spell it


def test_it_returns_the_request_id_it_was_given(api):
    response = api.get("/api/v1/config/", HTTP_X_REQUEST_ID="trace-abc.123")
    assert response["X-Request-ID"] == "trace-abc.123"
    response = api.get("/api/v1/config/", HTTP_X_REQUEST_ID="bad id with spaces")
    assert response["X-Request-ID"] != "bad id with spaces" and len(response["X-Request-ID"]) == 32


def test_it_answers_out_of_range_numbers_with_400(api):
    from dataflare_portal.core.api.exceptions import exception_handler as handler

    response = handler(OverflowError("Python int too large to convert to SQLite INTEGER"), {})
    assert response.status_code == 400 and "out of range" in response.data["error"]["message"]


def test_it_answers_errors_in_json_even_when_csv_was_asked_for(api):
    response = api.get("/api/v1/metrics/kpis/?format=csv&granularity=nonsense")
    error = assert_error_shape(response, 400)
    assert response["Content-Type"].startswith("application/json")
    assert "granularity" in error["fields"]
