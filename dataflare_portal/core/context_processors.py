"""Template context shared by every portal page: auth mode and the alert banner."""

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
    return {"portal_auth_mode": settings.AUTH_MODE, "portal_banner": banner}
