"""The sign-in and sign-out pages of the console (`/login/`, `/logout/`), by AUTH_MODE.

- none and local: Django's admin login and logout, unchanged.
- oidc: `/login/` offers "Sign in with <provider>" and a link to the break-glass form; a user who signed
  in through the provider but holds no portal role gets a page that says so (403). `/login/?local=1` is
  the password form for local administrators only, audited as break-glass. `/logout/` also ends the
  provider's session (single logout) when the provider advertises an end_session_endpoint.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.http import HttpResponseRedirect
from django.shortcuts import render
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext_lazy as _

from .services import user_role


def _is_break_glass(request) -> bool:
    return request.GET.get("local") == "1"


def _next_url(request) -> str:
    url = request.POST.get("next") or request.GET.get("next") or "/"
    if not url_has_allowed_host_and_scheme(url, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return "/"
    return url


def make_login(admin_login):
    """Wrap the admin site's login view (`admin.site.login`) with the AUTH_MODE=oidc behaviour."""

    def login(request, extra_context=None):
        if settings.AUTH_MODE != "oidc":
            return admin_login(request, extra_context)
        if _is_break_glass(request):
            request.break_glass = True
            was_signed_in = request.user.is_authenticated
            response = admin_login(
                request, {**(extra_context or {}), "break_glass": True, "provider_name": settings.OIDC_PROVIDER_NAME}
            )
            if request.method == "POST" and request.user.is_authenticated and not was_signed_in:
                from .oidc import sign_in_audit_break_glass

                sign_in_audit_break_glass(request, request.user)
            return response
        context = {
            **admin.site.each_context(request),
            "title": _("Log in"),
            "provider_name": settings.OIDC_PROVIDER_NAME,
            "next": _next_url(request),
            "oidc_failed": request.GET.get("oidc_failed") == "1",
            "has_permission": False,
        }
        if request.user.is_authenticated:
            if user_role(request.user) is not None:
                return HttpResponseRedirect(context["next"])
            from .models import OidcIdentity

            identity = OidcIdentity.objects.filter(user=request.user).order_by("-last_seen").first()
            context.update(no_role=True, identity=identity, role_claim=settings.OIDC_ROLE_CLAIM)
            return render(request, "registration/oidc_login.html", context, status=403)
        return render(request, "registration/oidc_login.html", context)

    return login


def make_logout(admin_logout):
    """Wrap `admin.site.logout`: in AUTH_MODE=oidc, sign out at the provider too when it supports it."""

    def logout(request, extra_context=None):
        if settings.AUTH_MODE == "oidc" and request.method == "POST":
            from .oidc import logout_then_provider

            url = logout_then_provider(request)
            return HttpResponseRedirect(url or "/login/")
        return admin_logout(request, extra_context)

    return logout
