"""API conventions every endpoint keeps: filters on lists, no-count pagination, brief form, documented."""

import pytest
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from dataflare_portal.core.api.pagination import NoCountPagination
from dataflare_portal.core.tests.test_permission_matrix import api_routes


def _list_routes():
    return [r for r in api_routes() if r.action == "list" and getattr(r.view_class, "queryset", None) is not None]


def test_every_model_list_has_django_filters_and_no_count_pagination():
    problems = []
    for route in _list_routes():
        view = route.view_class
        if not (getattr(view, "filterset_class", None) or getattr(view, "filterset_fields", None)):
            problems.append(f"{route}: no filterset_class/filterset_fields")
        pagination = getattr(view, "pagination_class", None)
        if pagination is None or not issubclass(pagination, NoCountPagination):
            problems.append(f"{route}: pagination {pagination}")
    assert len(_list_routes()) > 10
    assert not problems, "\n".join(problems)


def test_every_api_route_is_in_the_schema():
    spec = SchemaGenerator().get_schema(request=None, public=True)
    documented = {(path, method.upper()) for path, item in spec["paths"].items() for method in item}
    missing = []
    for route in api_routes():
        # The schema names path parameters after the model field; compare shapes, not names.
        if not any(m == route.method and _shape(p) == _shape(route.path) for p, m in documented):
            missing.append(str(route))
    assert not missing, "undocumented:\n" + "\n".join(missing)


def _shape(path: str) -> str:
    import re

    return re.sub(r"\{[^}]+\}", "{}", path)


@pytest.mark.django_db
def test_brief_representations_are_smaller(admin_user):
    from django.core.management import call_command

    call_command("seed_demo", "--days", "1", verbosity=0)
    client = APIClient()
    client.force_authenticate(admin_user)
    checked = 0
    for route in _list_routes():
        if not getattr(route.view_class, "brief_serializer_class", None):
            continue
        url = route.url()
        full = client.get(url).json()["results"]
        brief = client.get(url + "?brief=1").json()["results"]
        if not full:
            continue
        assert set(brief[0]) < set(full[0]), route
        checked += 1
    assert checked >= 3


def test_the_api_is_browsable(client, db):
    response = client.get("/api/v1/config/", HTTP_ACCEPT="text/html")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/html")
    assert "dashboard_refresh_seconds" in response.content.decode()
