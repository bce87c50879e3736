"""Role-based permissions for the API: viewer reads, operator acts, admin configures."""

from django.conf import settings
from rest_framework.permissions import SAFE_METHODS, BasePermission

from .services import ROLE_ADMIN, ROLE_OPERATOR, ROLE_VIEWER, user_role

_RANK = {None: 0, ROLE_VIEWER: 1, ROLE_OPERATOR: 2, ROLE_ADMIN: 3}


def required_role(request, view) -> str:
    """Reads need viewer; actions a view lists in `operator_actions` need operator; other writes admin."""
    if request.method in SAFE_METHODS:
        return ROLE_VIEWER
    action = getattr(view, "action", None)
    if action and action in getattr(view, "operator_actions", ()):
        return ROLE_OPERATOR
    return getattr(view, "write_role", ROLE_ADMIN)


class RolePermission(BasePermission):
    message = "Your role does not allow this."

    def has_permission(self, request, view) -> bool:
        if settings.AUTH_MODE == "none":
            return True
        role = user_role(request.user)
        return _RANK[role] >= _RANK[required_role(request, view)]
