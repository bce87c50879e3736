from dataflare_portal.core.api.routers import PortalRouter

from . import viewsets

app_name = "catalog-api"
router = PortalRouter()
router.register("projects", viewsets.ProjectViewSet)
router.register("data-sources", viewsets.DataSourceViewSet)
router.register("datasets", viewsets.DatasetViewSet)
router.register("dataset-versions", viewsets.DatasetVersionViewSet)
urlpatterns = router.urls
