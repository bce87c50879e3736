"""Template context shared by every portal page: auth mode, the alert banner, and the header's user tools."""

from django.conf import settings

from . import registry


def portal(request):
    banner = []
    for provider in registry.banner_providers:
        try:
            banner.extend(provider(request))
        except Exception:  # a broken provider must never take a page down
            import logging

            logging.getLogger(__name__).exception("banner provider failed")
    context = {"portal_auth_mode": settings.AUTH_MODE, "portal_banner": banner}
    # The admin's header shows its user tools (who is signed in, the language switcher, sign out) only
    # when `has_permission` is set, which admin views do and portal pages (dashboard, run, settings...)
    # did not: their header had no language switcher. Admin views still set their own.
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        from django.contrib import admin

        context["has_permission"] = admin.site.has_permission(request)
    return context
