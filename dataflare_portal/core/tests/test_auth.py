"""Auth modes and roles: system checks, group permissions in the admin, page guards, login rate limit."""

import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.test import RequestFactory
from rest_framework.test import APIClient

from dataflare_portal.core import checks
from dataflare_portal.core.auth import RoleRequiredMixin, role_required, roles_sync
from dataflare_portal.core.models import AuditLogEntry


# ---- AUTH_MODE=none safety ------------------------------------------------------------------
def _ids(settings):
    return {e.id for e in checks.check_auth_mode()}


def test_none_mode_is_refused_beyond_loopback_or_without_debug(settings):
    settings.AUTH_MODE, settings.DEBUG, settings.AUTH_MODE_NONE_ALLOW_REMOTE = "none", True, False
    settings.BIND_ADDRESS = "127.0.0.1"
    assert _ids(settings) == set()
    settings.BIND_ADDRESS = "::1"
    assert _ids(settings) == set()
    settings.BIND_ADDRESS = "10.0.0.5"
    assert _ids(settings) == {"dataflare.E001"}
    settings.BIND_ADDRESS, settings.DEBUG = "127.0.0.1", False
    assert _ids(settings) == {"dataflare.E002"}
    settings.AUTH_MODE_NONE_ALLOW_REMOTE = True
    assert _ids(settings) == set()
    settings.AUTH_MODE, settings.AUTH_MODE_NONE_ALLOW_REMOTE, settings.BIND_ADDRESS = "local", False, "10.0.0.5"
    assert _ids(settings) == set()


def test_none_mode_acts_as_the_builtin_operator(client, db):
    response = client.get("/system/config/")
    assert response.status_code == 200
    assert response.wsgi_request.user.username == "operator"


# ---- Group permissions (admin) ---------------------------------------------------------------
def test_roles_sync_gives_each_group_its_permissions(db):
    roles_sync()
    viewer, operator, admin = (
        set(Group.objects.get(name=n).permissions.values_list("codename", flat=True))
        for n in ("viewer", "operator", "admin")
    )
    assert "view_auditlogentry" in viewer and "view_systemconfig" in viewer
    assert all(c.startswith("view_") for c in viewer)
    assert viewer <= operator <= admin
    assert "change_systemconfig" in admin and "change_systemconfig" not in operator
    assert "delete_auditlogentry" in admin


def test_admin_lets_a_viewer_look_but_not_change(client, local_auth, viewer_user, admin_user):
    client.force_login(viewer_user)
    assert client.get("/core/auditlogentry/").status_code == 200
    assert client.get("/core/systemconfig/").status_code == 200
    assert client.get("/core/systemconfig/add/").status_code == 403
    client.force_login(admin_user)
    assert client.get("/core/systemconfig/add/").status_code == 200


def test_admin_refuses_users_without_a_role(client, local_auth, outsider_user):
    client.force_login(outsider_user)
    response = client.get("/core/auditlogentry/")
    assert response.status_code == 302 and "/login/" in response["Location"]


# ---- Pages -----------------------------------------------------------------------------------
@role_required("operator")
def _operator_page(request):
    return HttpResponse("ok")


class _AdminPage(RoleRequiredMixin):
    required_role = "admin"

    def dispatch(self, request, *args, **kwargs):
        return super().dispatch(request, *args, **kwargs)


class _Base:
    def dispatch(self, request, *args, **kwargs):
        return HttpResponse("ok")


class _AdminView(_AdminPage, _Base):
    pass


def _request(user):
    request = RequestFactory().get("/page/")
    request.user = user
    return request


def test_role_required_guards_pages_by_role(local_auth, viewer_user, operator_user, admin_user):
    from django.contrib.auth.models import AnonymousUser

    assert _operator_page(_request(AnonymousUser())).status_code == 302
    with pytest.raises(PermissionDenied):
        _operator_page(_request(viewer_user))
    assert _operator_page(_request(operator_user)).status_code == 200
    with pytest.raises(PermissionDenied):
        _AdminView().dispatch(_request(operator_user))
    assert _AdminView().dispatch(_request(admin_user)).status_code == 200


def test_role_required_lets_everyone_through_in_none_mode(settings, viewer_user):
    settings.AUTH_MODE = "none"
    assert _operator_page(_request(viewer_user)).status_code == 200


# ---- Login rate limit ------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _fresh_login_counters():
    """With Redis the cache outlives a test: start each one with no failures and no throttle history."""
    from django.core.cache import cache

    from dataflare_portal.core.auth import login_failures_clear

    for address in ("127.0.0.1", "10.1.2.3"):
        request = RequestFactory().get("/", REMOTE_ADDR=address)
        login_failures_clear(request, "alice-admin")
        cache.delete(f"throttle_login_{address}")
    yield


def test_admin_login_is_rate_limited_per_client_and_username(client, local_auth, admin_user, settings):
    settings.LOGIN_FAILURE_LIMIT = 3
    for _ in range(3):
        response = client.post("/login/", {"username": "alice-admin", "password": "wrong"})
        assert response.status_code == 200 and not response.wsgi_request.user.is_authenticated
    # Now even the right password is refused for this client and username...
    response = client.post("/login/", {"username": "alice-admin", "password": "pw-alice-admin"})
    assert response.status_code == 200 and not response.wsgi_request.user.is_authenticated
    # ...but another client address is not locked out.
    response = client.post("/login/", {"username": "alice-admin", "password": "pw-alice-admin"}, REMOTE_ADDR="10.1.2.3")
    assert response.status_code == 302


def test_token_endpoint_issues_tokens_and_is_rate_limited(local_auth, admin_user, settings):
    settings.LOGIN_FAILURE_LIMIT = 2
    api = APIClient()
    response = api.post("/api/v1/auth/token/", {"username": "alice-admin", "password": "pw-alice-admin"})
    assert response.status_code == 200
    token = response.json()["token"]
    assert AuditLogEntry.objects.filter(action="login", actor=admin_user).count() == 1
    assert APIClient(HTTP_AUTHORIZATION=f"Token {token}").get("/api/v1/config/").status_code == 200
    for _ in range(2):
        response = api.post("/api/v1/auth/token/", {"username": "alice-admin", "password": "nope"})
        assert response.status_code == 400
    response = api.post("/api/v1/auth/token/", {"username": "alice-admin", "password": "pw-alice-admin"})
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "login_rate_limited"


LOGIN_BUDGET = 10  # LOGIN_RATE's default, 10/min per client address


@pytest.mark.parametrize("url", ["/login/", "/api-auth/login/"])
def test_login_forms_are_throttled_per_address_whatever_the_username(client, local_auth, admin_user, url):
    """Issue 11: 25 usernames in 30 s were all answered; the address's budget now runs out."""
    statuses = [
        client.post(url, {"username": f"guess-{i}", "password": "x"}).status_code for i in range(LOGIN_BUDGET + 5)
    ]
    assert statuses[:LOGIN_BUDGET] == [200] * LOGIN_BUDGET
    assert statuses[LOGIN_BUDGET:] == [429] * 5
    refused = client.post(url, {"username": "alice-admin", "password": "pw-alice-admin"})
    assert refused.status_code == 429 and int(refused["Retry-After"]) >= 1
    assert not refused.wsgi_request.user.is_authenticated
    # Other addresses keep their own budget; a GET of the form is never counted.
    assert client.get(url).status_code == 200
    ok = client.post(url, {"username": "alice-admin", "password": "pw-alice-admin"}, REMOTE_ADDR="10.1.2.3")
    assert ok.status_code == 302


def test_token_endpoint_and_login_form_share_one_budget_and_ignore_forwarded_for(client, local_auth, admin_user):
    api = APIClient()
    for i in range(LOGIN_BUDGET):
        # A client-chosen X-Forwarded-For must not buy a fresh budget.
        response = api.post(
            "/api/v1/auth/token/", {"username": f"guess-{i}", "password": "x"}, HTTP_X_FORWARDED_FOR=f"203.0.113.{i}"
        )
        assert response.status_code == 400
    response = api.post("/api/v1/auth/token/", {"username": "g", "password": "x"}, HTTP_X_FORWARDED_FOR="198.51.100.7")
    assert response.status_code == 429
    assert client.post("/login/", {"username": "alice-admin", "password": "pw-alice-admin"}).status_code == 429


def test_token_endpoint_names_missing_fields(local_auth, db):
    response = APIClient().post("/api/v1/auth/token/", {"username": "x"}, format="json")
    assert response.status_code == 400 and "password" in response.json()["error"]["fields"]


def test_api_accepts_session_and_token_auth_and_refuses_anonymous(local_auth, viewer_user):
    assert APIClient().get("/api/v1/audit-log/").status_code == 401
    session = APIClient()
    session.force_login(viewer_user)
    assert session.get("/api/v1/audit-log/").status_code == 200
