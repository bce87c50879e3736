"""Stage kinds (processors): a registry of kinds, each with a JSON-schema config and a pure process()."""

from .base import (
    GlobalStageKind,
    PerRecordStageKind,
    Quarantine,
    StageConfigError,
    StageContext,
    StageKind,
    StageResult,
)
from .registry import ENTRY_POINT_GROUP, StageKindRegistry, UnknownStageKind, registry


def validate_stage_config(kind: str, config: dict | None) -> None:
    """Validate a stage's config for its kind; raises StageConfigError (UnknownStageKind for a bad kind)."""
    registry.get(kind).validate_config(config or {})


__all__ = [
    "ENTRY_POINT_GROUP",
    "GlobalStageKind",
    "PerRecordStageKind",
    "Quarantine",
    "StageConfigError",
    "StageContext",
    "StageKind",
    "StageKindRegistry",
    "StageResult",
    "UnknownStageKind",
    "registry",
    "validate_stage_config",
]
