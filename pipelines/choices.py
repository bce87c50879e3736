"""Status enums of pipelines, with named state groups."""

from django.db import models
from django.utils.translation import gettext_lazy as _


class PipelineStatus(models.TextChoices):
    DRAFT = "draft", _("Draft")
    ACTIVE = "active", _("Active")
    ARCHIVED = "archived", _("Archived")

    @classmethod
    def runnable(cls):
        return (cls.DRAFT, cls.ACTIVE)


class StageKindGroup(models.TextChoices):
    """Whether a stage streams record by record or needs its whole input (dedup, QC, publish)."""

    PER_RECORD = "per_record", _("Per record (streams)")
    GLOBAL = "global", _("Global (waits for complete input)")
