from dataflare_portal.core.api.routers import PortalRouter

from . import viewsets

app_name = "alerts-api"
router = PortalRouter()
router.register("rules", viewsets.AlertRuleViewSet)
router.register("channels", viewsets.NotificationChannelViewSet)
router.register("webhooks", viewsets.RunWebhookViewSet)
router.register("alerts", viewsets.AlertViewSet)
router.register("notifications", viewsets.NotificationViewSet)
router.register("budget-pauses", viewsets.BudgetPauseViewSet, basename="budget-pause")
urlpatterns = router.urls
