import pytest

from dataflare_portal.core.api.parsers import json_depth_exceeds


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/v1/catalog/projects/", "/api/v1/alerts/rules/", "/api/v1/tasks/runs/"])
def test_it_answers_400_not_500_to_deeply_nested_json_on_every_app(client, path):
    body = "[" * 50_000 + "]" * 50_000
    response = client.post(path, data=body, content_type="application/json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "parse_error"
    assert "nested" in error["message"]


def test_it_measures_depth_outside_strings_only():
    assert json_depth_exceeds("[" * 40 + "]" * 40, 32)
    assert not json_depth_exceeds('{"a": "' + "[" * 100 + '"}', 32)
    assert not json_depth_exceeds("[" * 32 + "]" * 32, 32)
