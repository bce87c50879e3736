from dataflare_portal.core.api.routers import PortalRouter

from . import views

app_name = "schedules-api"
router = PortalRouter()
router.register("schedules", views.ScheduleViewSet)
router.register("schedule-fires", views.ScheduleFireViewSet)
router.register("triggers", views.DatasetTriggerViewSet)
router.register("trigger-fires", views.TriggerFireViewSet)
urlpatterns = router.urls
