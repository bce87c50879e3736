"""The `publish` kind (global marker): the engine calls the publish service, which writes through a connector."""

from __future__ import annotations

from collections.abc import Iterator

from django.utils.translation import gettext_lazy as _

from catalog.locations import TemplateSyntaxError, location_template

from .base import GlobalStageKind, StageConfigError, StageContext, StageResult

PUBLISH_FORMATS = ["jsonl", "csv", "parquet", "table"]


class PublishKind(GlobalStageKind):
    """Last stage: writes the records as a new dataset version, atomically, with checksum and lineage."""

    name = "publish"
    label = _("Publish dataset version")
    description = _("Write the output as a new, atomic dataset version with checksum and lineage.")
    is_marker = True
    config_schema = {
        "type": "object",
        "properties": {
            "data_source": {
                "oneOf": [{"type": "integer", "minimum": 1}, {"type": "string", "minLength": 1}],
                "title": _("Data source"),
                "description": _("Its id or name; the output dataset's source when absent."),
            },
            "dataset": {
                "oneOf": [{"type": "integer", "minimum": 1}, {"type": "string", "minLength": 1}],
                "title": _("Dataset"),
                "description": _("Its id or name; the pipeline's output dataset when absent."),
            },
            "format": {
                "enum": PUBLISH_FORMATS,
                "title": _("Format"),
                "description": _("The dataset's format when absent."),
                "x-enumCodes": True,
            },
            "location": {
                "type": "string",
                "minLength": 1,
                "title": _("Location"),
                "description": _(
                    "A template, e.g. `out/{dataset}/v{version:04d}.jsonl` (placeholders: `{dataset}`, `{version}`, "
                    "`{run_id}`; only `{version}` takes a spec, zero-padding `0Nd`)."
                ),
            },
            "fields": {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "minItems": 1,
                "title": _("Fields"),
                "description": _("Publish only these fields (all fields when absent)."),
            },
        },
        "additionalProperties": False,
    }

    def check_config(self, config: dict) -> None:
        if "location" in config:
            try:
                location_template(config["location"])
            except TemplateSyntaxError as exc:
                raise StageConfigError(exc.message, "$.location") from None

    def run_global(self, chunks: Iterator[list[dict]], ctx: StageContext) -> Iterator[StageResult]:
        # The records pass through; the engine streams them into the connector's atomic writer.
        for chunk in chunks:
            yield StageResult(records=chunk)
