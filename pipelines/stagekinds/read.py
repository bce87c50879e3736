"""The `read` kind (marker): the engine reads the input dataset through its connector; this kind only projects."""

from __future__ import annotations

from django.utils.translation import gettext_lazy as _

from .base import PerRecordStageKind, StageContext, StageResult


class ReadKind(PerRecordStageKind):
    """First stage of a pipeline; the engine feeds it the input dataset's chunks (optionally projected)."""

    name = "read"
    label = _("Read input dataset")
    description = _("Reads the pipeline's input dataset through its data source connector.")
    is_marker = True
    config_schema = {
        "type": "object",
        "properties": {
            "fields": {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "minItems": 1,
                "uniqueItems": True,
                "title": _("Fields"),
                "description": _("Keep only these fields (all fields when absent)."),
            },
            "batch_size": {
                "type": "integer",
                "minimum": 1,
                "maximum": 1_000_000,
                "title": _("Batch size"),
                "description": _("Records per batch of this stage (the pipeline's batch size when absent)."),
            },
        },
        "additionalProperties": False,
    }

    def process(self, records: list[dict], ctx: StageContext) -> StageResult:
        fields = (ctx.config or {}).get("fields")
        if not fields:
            return StageResult(records=records)
        return StageResult(records=[{k: r.get(k) for k in fields} for r in records])
