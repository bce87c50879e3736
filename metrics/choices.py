from django.db import models
from django.utils.translation import gettext_lazy as _


class Granularity(models.TextChoices):
    MINUTE = "minute", _("Minute")
    HOUR = "hour", _("Hour")
    DAY = "day", _("Day")
    # Coarse rollups summed from day rows: history by week and month reads a row per period.
    WEEK = "week", _("Week")
    MONTH = "month", _("Month")


# The granularities a window query (series, KPIs, tables) may use; month rows serve history and
# the whole months inside long windows.
WINDOW_GRANULARITIES = (Granularity.MINUTE, Granularity.HOUR, Granularity.DAY, Granularity.WEEK)
