"""Schedule kinds, policies and fire outcomes."""

from django.db import models
from django.utils.translation import gettext_lazy as _


class ScheduleKind(models.TextChoices):
    CRON = "cron", _("Cron expression")
    INTERVAL = "interval", _("Fixed interval")


class OverlapPolicy(models.TextChoices):
    SKIP = "skip", _("Skip the slot")
    QUEUE = "queue", _("Queue until the previous run ends")
    PARALLEL = "parallel", _("Run in parallel")


class CatchUp(models.TextChoices):
    NONE = "none", _("None: only slots due now")
    LATEST = "latest", _("Latest missed slot only")
    ALL = "all", _("Every missed slot, up to the limit")


class FireOutcome(models.TextChoices):
    STARTED = "started", _("Run started")
    QUEUED = "queued", _("Queued")
    SKIPPED = "skipped", _("Skipped")
    FAILED = "failed", _("Could not start")

    @classmethod
    def final(cls):
        return (cls.STARTED, cls.SKIPPED, cls.FAILED)
