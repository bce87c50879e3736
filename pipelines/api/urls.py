from dataflare_portal.core.api.routers import PortalRouter

from . import views
from .model_configs import ModelConfigViewSet

app_name = "pipelines-api"
router = PortalRouter()
router.register("pipelines", views.PipelineViewSet)
router.register("stages", views.PipelineStageViewSet)
router.register("templates", views.PipelineTemplateViewSet)
router.register("qc-policies", views.QCPolicyViewSet)

# ---- Model configs (gRPC helper): register the model-config viewset below this line -------
router.register("model-configs", ModelConfigViewSet)

urlpatterns = router.urls
