from dataflare_portal.core.api.routers import PortalRouter

from .views import GatewayKeyViewSet, GatewayRequestViewSet

app_name = "gateway-api"
router = PortalRouter()
router.register("keys", GatewayKeyViewSet)
router.register("requests", GatewayRequestViewSet)

urlpatterns = router.urls
