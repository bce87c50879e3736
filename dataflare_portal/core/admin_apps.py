"""django.contrib.admin with the portal's role-gated site (kept apart: an apps module must not import models)."""

from django.contrib.admin.apps import AdminConfig


class PortalAdminConfig(AdminConfig):
    """The admin app with the portal's site: only users holding a role (viewer and up) get in."""

    default_site = "dataflare_portal.core.admin_site.PortalAdminSite"
