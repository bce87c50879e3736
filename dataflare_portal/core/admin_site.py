"""The admin site of the portal: `is_staff` alone is not enough, the user needs a role."""

from django.conf import settings
from django.contrib.admin import AdminSite


class PortalAdminSite(AdminSite):
    """Django's admin site, gated by the same roles as the API and the pages (viewer and up)."""

    def has_permission(self, request):
        if not super().has_permission(request):
            return False
        from .services import user_role

        return settings.AUTH_MODE == "none" or user_role(request.user) is not None
