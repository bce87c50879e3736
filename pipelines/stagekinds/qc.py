"""The `qc` kind (global): quality acceptance by a QC policy.

The QC helper fills in run_global (tasks.qc creates the lot, samples, and waits for review);
until then the kind validates its config and passes records through unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator

from django.utils.translation import gettext_lazy as _

from .base import GlobalStageKind, StageContext, StageResult


class QCKind(GlobalStageKind):
    """Automatic checks plus acceptance sampling against a QC policy (by id or name)."""

    name = "qc"
    label = _("Quality check")
    description = _("Check records against a QC policy and sample them for human review.")
    is_marker = True
    config_schema = {
        "type": "object",
        "properties": {
            "policy": {
                "oneOf": [{"type": "integer", "minimum": 1}, {"type": "string", "minLength": 1}],
                "title": _("QC policy"),
                "description": _("Its id or name; the pipeline's policy when absent."),
            },
            "text_field": {
                "type": "string",
                "minLength": 1,
                "default": "text",
                "title": _("Text field"),
                "description": _("The field the automatic checks read."),
            },
            "sample_seed": {
                "type": "integer",
                "title": _("Sample seed"),
                "description": _("Seed of the sample draw; the QC policy's when absent."),
            },
        },
        "additionalProperties": False,
    }

    def run_global(self, chunks: Iterator[list[dict]], ctx: StageContext) -> Iterator[StageResult]:
        for chunk in chunks:
            yield StageResult(records=chunk)
