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


class ModelProtocol(models.TextChoices):
    """How a model config's service is called (modelclient.config.PROTOCOLS)."""

    KSERVE_V2 = "kserve_v2", _("KServe V2 (gRPC)")
    OPENAI = "openai", _("OpenAI-compatible (HTTP)")


class OpenAIApi(models.TextChoices):
    """Which OpenAI-compatible API an OpenAI model config calls (modelclient.config.OPENAI_APIS)."""

    CHAT = "chat", _("Chat completions")
    COMPLETIONS = "completions", _("Completions")
    EMBEDDINGS = "embeddings", _("Embeddings")
