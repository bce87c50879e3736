from dataflare_portal.core.api.routers import PortalRouter

app_name = "tasks-api"
router = PortalRouter()

# ---- Engine: runs, stage runs, batches, quarantine, workers ----
from . import views as _engine  # noqa: E402

router.register("runs", _engine.TaskRunViewSet)
router.register("stage-runs", _engine.StageRunViewSet)
router.register("batches", _engine.BatchViewSet)
router.register("quarantined-records", _engine.QuarantinedRecordViewSet)
router.register("workers", _engine.WorkerViewSet)
router.register("backfills", _engine.BackfillViewSet, basename="backfill")

# ---- QC, review and publish (templates+QC helper) ----
from . import qc as _qc  # noqa: E402

router.register("qc-lots", _qc.QCLotViewSet)
router.register("review-items", _qc.ReviewItemViewSet)
router.register("dataset-versions", _qc.DatasetVersionArchiveViewSet, basename="dataset-version")
urlpatterns = router.urls
