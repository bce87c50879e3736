from django.urls import path

from dataflare_portal.core.api.routers import PortalRouter

from . import views, viewsets

app_name = "core-api"
router = PortalRouter()
router.register("config", viewsets.SystemConfigViewSet, basename="config")
router.register("audit-log", viewsets.AuditLogEntryViewSet)
urlpatterns = router.urls + [
    path("auth/token/", views.AuthTokenView.as_view(), name="auth-token"),
    path("logs/", views.LogsView.as_view(), name="logs"),
]
