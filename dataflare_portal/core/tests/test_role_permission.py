"""The API's role rule, written out by hand (docs/security.md): reads need viewer, a view's operator actions need
operator, every other write needs the view's write role (admin unless it says otherwise); AUTH_MODE=none lets all."""

import pytest
from django.contrib.auth.models import AnonymousUser
from rest_framework.test import APIRequestFactory

from dataflare_portal.core.permissions import RolePermission, required_role


class _View:
    """A viewset as the permission sees it: the routed action and the role attributes."""

    def __init__(self, action=None, **attrs):
        if action is not None:
            self.action = action
        for name, value in attrs.items():
            setattr(self, name, value)


OPS = {"operator_actions": ("run", "cancel")}
# (method, view, the role it needs) — the expectations are written here, not derived from the code.
CASES = [
    ("GET", _View("list", **OPS), "viewer"),
    ("HEAD", _View("retrieve", **OPS), "viewer"),
    ("OPTIONS", _View("metadata"), "viewer"),
    ("GET", _View("run", **OPS), "viewer"),  # reading an action's route is still a read
    ("POST", _View("run", **OPS), "operator"),
    ("POST", _View("cancel", **OPS), "operator"),
    ("POST", _View("create", **OPS), "admin"),
    ("PUT", _View("update", **OPS), "admin"),
    ("PATCH", _View("partial_update", **OPS), "admin"),
    ("DELETE", _View("destroy", **OPS), "admin"),
    ("POST", _View("run"), "admin"),  # a view without operator actions
    ("POST", _View(**OPS), "admin"),  # a plain APIView has no action
    ("POST", _View("", operator_actions=("",)), "admin"),  # an empty action is no action
    ("POST", _View("create", write_role="operator"), "operator"),
    ("DELETE", _View("destroy", write_role="viewer"), "viewer"),
    ("POST", _View("run", write_role="admin", **OPS), "operator"),
]
ALLOWED = {
    None: set(),
    "viewer": {"viewer"},
    "operator": {"viewer", "operator"},
    "admin": {"viewer", "operator", "admin"},
}


@pytest.mark.parametrize(("method", "view", "needed"), CASES)
def test_required_role_follows_the_written_rule(method, view, needed):
    request = getattr(APIRequestFactory(), method.lower())("/api/v1/x/")
    assert required_role(request, view) == needed


@pytest.mark.django_db
def test_each_role_passes_exactly_the_checks_at_or_below_it(
    local_auth, admin_user, operator_user, viewer_user, outsider_user
):
    users = {
        None: [AnonymousUser(), outsider_user],
        "viewer": [viewer_user],
        "operator": [operator_user],
        "admin": [admin_user],
    }
    outsider_user.is_superuser = False
    checked = 0
    for role, people in users.items():
        for user in people:
            for method, view, needed in CASES:
                request = getattr(APIRequestFactory(), method.lower())("/api/v1/x/")
                request.user = user
                allowed = RolePermission().has_permission(request, view)
                assert allowed == (needed in ALLOWED[role]), (user, method, vars(view), needed)
                checked += 1
    assert checked == 5 * len(CASES)
    # a superuser outside every group is an admin; an inactive admin is nobody
    superuser = outsider_user
    superuser.is_superuser = True
    request = APIRequestFactory().delete("/api/v1/x/")
    request.user = superuser
    assert RolePermission().has_permission(request, _View("destroy"))
    admin_user.is_active = False
    request = APIRequestFactory().get("/api/v1/x/")
    request.user = admin_user
    assert not RolePermission().has_permission(request, _View("list"))


def test_without_sign_in_every_call_passes(settings):
    settings.AUTH_MODE = "none"
    for method, view, _needed in CASES:
        request = getattr(APIRequestFactory(), method.lower())("/api/v1/x/")
        request.user = AnonymousUser()
        assert RolePermission().has_permission(request, view)


@pytest.mark.django_db
def test_a_refused_call_says_why(local_auth, viewer_user):
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(viewer_user)
    response = client.post("/api/v1/catalog/projects/", {"slug": "x", "name": "x"}, format="json")
    assert response.status_code == 403
    assert response.json()["error"]["message"] == "Your role does not allow this."
