"""Auth modes and roles for pages, the admin and the API; login rate limiting.

- `role_required("operator")` (decorator) and `RoleRequiredMixin` (class-based views) guard portal
  pages the same way `permissions.RolePermission` guards the API. AUTH_MODE=none lets every
  request through (it acts as the built-in operator).
- `roles_sync()` gives the viewer/operator/admin groups their Django model permissions so the
  admin enforces the same roles: viewer views, operator views and runs actions, admin does all.
- `RateLimitedModelBackend` refuses logins for a client address and username after too many
  failures (admin login, API login, token endpoint).
- `LoginRateThrottle` is the per-address budget of login attempts (`LOGIN_RATE`): the token
  endpoint uses it as a DRF throttle, the admin and API login forms through `login_throttled`;
  all three draw on one counter per client address, so trying many usernames is bounded too.
"""

from __future__ import annotations

import hashlib
from functools import wraps

from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.views import redirect_to_login
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.utils.translation import gettext
from rest_framework.throttling import SimpleRateThrottle

from .services import ROLE_ADMIN, ROLE_OPERATOR, ROLE_VIEWER, ROLES, user_role

__all__ = [
    "PORTAL_APP_LABELS",
    "LoginRateThrottle",
    "RateLimitedModelBackend",
    "RoleRequiredMixin",
    "has_role",
    "login_blocked",
    "login_failure_record",
    "login_failures_clear",
    "login_throttled",
    "role_required",
    "roles_sync",
]

RANK = {None: 0, ROLE_VIEWER: 1, ROLE_OPERATOR: 2, ROLE_ADMIN: 3}
PORTAL_APP_LABELS = ("core", "catalog", "pipelines", "tasks", "metrics", "alerts", "gateway", "schedules", "wasmstages")
DEFAULT_CODENAME_PREFIXES = ("add_", "change_", "delete_", "view_")


def has_role(user, role: str) -> bool:
    """True when AUTH_MODE=none or the user's role ranks at least `role`."""
    if settings.AUTH_MODE == "none":
        return True
    return RANK[user_role(user)] >= RANK[role]


def role_required(role: str = ROLE_VIEWER):
    """Page view decorator: anonymous users go to the login page, too-low roles get 403."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")

    def decorator(view):
        @wraps(view)
        def wrapped(request, *args, **kwargs):
            if settings.AUTH_MODE != "none" and not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if not has_role(request.user, role):
                raise PermissionDenied
            return view(request, *args, **kwargs)

        wrapped.required_role = role
        return wrapped

    return decorator


class RoleRequiredMixin:
    """Class-based page views: set `required_role` (viewer by default)."""

    required_role = ROLE_VIEWER

    def dispatch(self, request, *args, **kwargs):
        if settings.AUTH_MODE != "none" and not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not has_role(request.user, self.required_role):
            raise PermissionDenied
        return super().dispatch(request, *args, **kwargs)


# ---- Group permissions -----------------------------------------------------------------------
def roles_sync() -> dict[str, int]:
    """Give each role group its model permissions over the portal apps; returns permission counts."""
    from django.contrib.auth.models import Permission

    from . import registry
    from .services import roles_ensure

    groups = roles_ensure(sync=False)
    portal = Permission.objects.filter(content_type__app_label__in=PORTAL_APP_LABELS)
    view = list(portal.filter(codename__startswith="view_"))
    custom = [p for p in portal if not p.codename.startswith(DEFAULT_CODENAME_PREFIXES)]
    extra = []
    for dotted in registry.operator_permissions:
        app_label, _, codename = dotted.partition(".")
        extra.extend(Permission.objects.filter(content_type__app_label=app_label, codename=codename))
    # Admins also manage users' API tokens (DRF's authtoken admin works on the TokenProxy model).
    everything = (
        list(portal)
        + list(Permission.objects.filter(content_type__app_label="auth", codename__in=["view_user", "view_group"]))
        + list(Permission.objects.filter(content_type__app_label="authtoken"))
    )
    wanted = {
        ROLE_VIEWER: view,
        ROLE_OPERATOR: view + custom + extra,
        ROLE_ADMIN: everything,
    }
    counts = {}
    for name, perms in wanted.items():
        groups[name].permissions.set({p.pk for p in perms})
        counts[name] = len({p.pk for p in perms})
    return counts


# ---- Login rate limit ------------------------------------------------------------------------
def client_address(request) -> str:
    """The client address Django sees (REMOTE_ADDR; a trusted proxy should set it correctly)."""
    if request is None:
        return "-"
    return request.META.get("REMOTE_ADDR") or "-"


def _failure_key(request, username: str | None) -> str:
    raw = f"{client_address(request)}|{(username or '').strip().lower()}"
    return "dataflare:login-failures:" + hashlib.sha256(raw.encode()).hexdigest()[:32]


def login_blocked(request, username: str | None) -> bool:
    """True when this client and username have failed LOGIN_FAILURE_LIMIT times within the window."""
    try:
        count = int(cache.get(_failure_key(request, username)) or 0)
    except Exception:
        return False
    return count >= settings.LOGIN_FAILURE_LIMIT


def login_failure_record(request, username: str | None) -> int:
    """Count one failed login for this client and username; returns the count so far."""
    key = _failure_key(request, username)
    try:
        if cache.add(key, 1, timeout=settings.LOGIN_FAILURE_WINDOW):
            return 1
        return cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=settings.LOGIN_FAILURE_WINDOW)
        return 1


def login_failures_clear(request, username: str | None) -> None:
    cache.delete(_failure_key(request, username))


class RateLimitedModelBackend(ModelBackend):
    """ModelBackend that refuses to check passwords once a client/username is over the failure limit."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        name = username if username is not None else kwargs.get(self._username_field())
        if login_blocked(request, name):
            # PermissionDenied stops Django trying other backends and fires user_login_failed.
            if request is not None:
                request.login_rate_limited = True
            raise PermissionDenied("too many failed logins")
        if settings.AUTH_MODE == "oidc" and not getattr(request, "break_glass", False):
            return None  # AUTH_MODE=oidc: passwords only on the break-glass form (/login/?local=1)
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is not None and settings.AUTH_MODE == "oidc" and not _break_glass_allowed(user):
            return None
        return user

    @staticmethod
    def _username_field() -> str:
        from django.contrib.auth import get_user_model

        return get_user_model().USERNAME_FIELD


def _break_glass_allowed(user) -> bool:
    """AUTH_MODE=oidc: only local administrators (no identity at the provider) may use a password."""
    return user_role(user) == ROLE_ADMIN and not user.oidc_identities.exists()


class LoginRateThrottle(SimpleRateThrottle):
    """LOGIN_RATE login attempts per client address, whatever the usernames (token endpoint and login forms)."""

    scope = "login"

    def get_cache_key(self, request, view):
        # REMOTE_ADDR, as for the failure counter: DRF's default ident trusts a client's X-Forwarded-For,
        # which would let a client rotate that header to get a fresh budget per request.
        return self.cache_format % {"scope": self.scope, "ident": client_address(request)}


def login_throttled(view):
    """Wrap a login form view: a POST over the address's LOGIN_RATE budget gets 429 and no password check."""

    @wraps(view)
    def wrapped(request, *args, **kwargs):
        if request.method == "POST":
            throttle = LoginRateThrottle()
            if not throttle.allow_request(request, None):
                wait = max(1, int(throttle.wait() or 1))
                response = HttpResponse(
                    gettext("Too many login attempts from your address; try again in %(s)d seconds.") % {"s": wait},
                    status=429,
                    content_type="text/plain; charset=utf-8",
                )
                response["Retry-After"] = str(wait)
                return response
        return view(request, *args, **kwargs)

    return wrapped


def on_login_failed(sender, credentials, request=None, **kwargs):
    login_failure_record(request, credentials.get("username"))


def on_logged_in(sender, request, user, **kwargs):
    login_failures_clear(request, user.get_username())
