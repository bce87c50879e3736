from dataflare_portal.core.api.routers import PortalRouter

from . import views

app_name = "wasmstages-api"
router = PortalRouter()
router.register("modules", views.WasmModuleViewSet)

urlpatterns = router.urls
