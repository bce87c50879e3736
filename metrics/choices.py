from django.db import models
from django.utils.translation import gettext_lazy as _


class Granularity(models.TextChoices):
    MINUTE = "minute", _("Minute")
    HOUR = "hour", _("Hour")
    DAY = "day", _("Day")
