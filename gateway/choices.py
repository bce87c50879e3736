"""Gateway enums."""

from django.db import models
from django.utils.translation import gettext_lazy as _


class BudgetPeriod(models.TextChoices):
    DAY = "day", _("Day")
    WEEK = "week", _("Week")
    MONTH = "month", _("Month")


class GatewayEndpoint(models.TextChoices):
    CHAT = "chat", _("Chat completions")
    COMPLETIONS = "completions", _("Completions")
    EMBEDDINGS = "embeddings", _("Embeddings")
    MODELS = "models", _("Models")
