"""One router per app; its root view is named `api-root` inside the app's namespace."""

from rest_framework.routers import DefaultRouter


class PortalRouter(DefaultRouter):
    include_format_suffixes = False
