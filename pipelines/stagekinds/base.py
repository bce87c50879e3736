"""Stage kind base classes: config validation with JSON paths, per-record and global processors."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import jsonschema
from django.utils.translation import gettext_lazy as _

from dataflare_portal.core.jsonschema_messages import schema_error_message
from dataflare_portal.core.render import find_surrogate
from pipelines.choices import StageKindGroup

__all__ = [
    "GlobalStageKind",
    "PerRecordStageKind",
    "Quarantine",
    "StageConfigError",
    "StageContext",
    "StageKind",
    "StageResult",
    "join_path",
    "tagged_union_schema",
    "validate_schema",
]


class StageConfigError(ValueError):
    """A stage config is invalid; `path` is the JSON path of the bad value (e.g. `$.rules[1].pattern`)."""

    def __init__(self, message: str, path: str = "$"):
        super().__init__(f"{path}: {message}" if path and path != "$" else str(message))
        self.message = str(message)
        self.path = path


@dataclass
class Quarantine:
    """A record set aside with a machine code and a human reason (index is its position in the input chunk)."""

    index: int
    code: str
    reason: str
    record: dict | None = None


@dataclass
class StageResult:
    """What one call of a stage produced: output records, how many were filtered, quarantined, model usage."""

    records: list[dict]
    filtered: int = 0
    quarantined: list[Quarantine] = field(default_factory=list)
    usage: list[dict] = field(default_factory=list)


@dataclass
class StageContext:
    """Everything a processor may use besides its records; no database handle on purpose (workers stay pure)."""

    config: dict
    run_id: Any = None
    stage_key: str = ""
    batch_index: int = 0
    attempt: int = 1
    model_config: Any = None
    workspace: Path | None = None
    extra: dict = field(default_factory=dict)
    # A folder for this batch that outlives its attempts (same path on every redo; not created in advance):
    # a stage may keep durable partial results there so a redo repeats only what is missing.
    scratch: Path | None = None


def join_path(base: str, *parts: str | int) -> str:
    """Append keys and indexes to a JSON path: join_path("$", "rules", 1) == "$.rules[1]"."""
    out = base or "$"
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            out += f".{part}"
        else:
            out += "[" + repr(part) + "]"
    return out


def tagged_union_schema(schema: dict, field: str, tag: str, variants: dict[str, dict]) -> dict:
    """`schema` with the items of array `field` replaced by a oneOf of `variants` told apart by `tag`.

    Kinds whose list entries have per-type settings (filter rules, clean steps) validate each entry
    in check_config; the form needs every variant's fields up front to offer them.
    """
    items = {"oneOf": list(variants.values()), "x-discriminator": tag}
    field_schema = {**schema["properties"][field], "items": items}
    return {**schema, "properties": {**schema["properties"], field: field_schema}}


def validate_schema(schema: dict, instance: Any, base_path: str = "$") -> None:
    """Validate against a JSON Schema; raise StageConfigError at the deepest, most relevant bad value."""
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    if error is None:
        return
    parts: list[str | int] = list(error.absolute_path)
    message = schema_error_message(error)
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [name for name in error.validator_value if name not in error.instance]
        if missing:
            parts.append(missing[0])
            message = str(_("This field is required."))
    elif error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in allowed)
        if extra:
            parts.append(extra[0])
            message = str(_("Unknown setting."))
    raise StageConfigError(message, join_path(base_path, *parts))


def _refuse_surrogates(config: Any) -> None:
    """A lone UTF-16 surrogate cannot be encoded to UTF-8: refuse it here rather than fail as a 500 on save."""
    stack: list[tuple[Any, str]] = [(config, "$")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if find_surrogate(item) is not None:
                raise StageConfigError(_("A lone UTF-16 surrogate (such as \\ud800) is not text."), path)
        elif isinstance(item, dict):
            for key, sub in item.items():
                if isinstance(key, str) and find_surrogate(key) is not None:
                    raise StageConfigError(_("A lone UTF-16 surrogate (such as \\ud800) is not text."), path)
                stack.append((sub, join_path(path, str(key))))
        elif isinstance(item, list):
            stack.extend((sub, join_path(path, i)) for i, sub in enumerate(item))


class StageKind:
    """A processor type. Subclasses set name/label/group/config_schema and implement process or run_global."""

    name: ClassVar[str] = ""
    label: ClassVar[Any] = ""
    description: ClassVar[Any] = ""
    group: ClassVar[StageKindGroup] = StageKindGroup.PER_RECORD
    config_schema: ClassVar[dict] = {"type": "object"}
    needs_model_config: ClassVar[bool] = False
    # A marker kind does no record work itself: the engine performs its step (read, publish).
    is_marker: ClassVar[bool] = False

    def validate_config(self, config: Any) -> None:
        """Raise StageConfigError (with a JSON path) if `config` is not valid for this kind."""
        if config is None:
            config = {}
        _refuse_surrogates(config)
        validate_schema(self.config_schema, config)
        self.check_config(config)

    def form_schema(self) -> dict:
        """The schema the config form is generated from: config_schema, with tagged unions spelled out."""
        return self.config_schema

    def check_config(self, config: dict) -> None:
        """Semantic checks beyond the schema (regexes compile, ranges ordered); override in subclasses."""

    def defaults(self, config: dict | None) -> dict:
        """The config with the schema's top-level defaults filled in."""
        out = {
            key: spec["default"]
            for key, spec in self.config_schema.get("properties", {}).items()
            if isinstance(spec, dict) and "default" in spec
        }
        out.update(config or {})
        return out

    def resolve_for_run(self, config: dict) -> dict:
        """The config a run records when it starts: moving references fixed (a module's "latest" becomes a
        version), so every batch of the run sees the same thing. Raises StageConfigError; default: as is."""
        return config

    def process(self, records: list[dict], ctx: StageContext) -> StageResult:
        raise NotImplementedError(f"{self.name} is a global stage kind; call run_global()")

    def run_global(self, chunks: Iterator[list[dict]], ctx: StageContext) -> Iterator[StageResult]:
        raise NotImplementedError(f"{self.name} is a per-record stage kind; call process()")

    def __repr__(self) -> str:
        return f"<StageKind {self.name} ({self.group})>"


class PerRecordStageKind(StageKind):
    """Streams: each batch is processed on its own, in any worker."""

    group = StageKindGroup.PER_RECORD

    def run_global(self, chunks: Iterator[list[dict]], ctx: StageContext) -> Iterator[StageResult]:
        # Lets the engine treat every kind uniformly when it wants to.
        for chunk in chunks:
            yield self.process(chunk, ctx)


class GlobalStageKind(StageKind):
    """Needs its whole input: the engine calls run_global once all upstream batches are done.

    A global kind that decides every record by a key alone (keep or drop, looking only at the records that
    share its key, in input order) may run *partitioned* on every worker instead (docs/stage-kinds.md,
    tasks/partition.py): `partitions()` says into how many hash partitions, `record_keys()` gives each
    record's key, and `reduce_partition()` names the records of one partition to drop.
    """

    group = StageKindGroup.GLOBAL

    def partitions(self, config: dict, live_workers: int) -> int:
        """How many hash partitions to run in (0: one unit, `run_global`); `live_workers` counts workers alive."""
        return 0

    def record_keys(self, records: list[dict], ctx: StageContext) -> list[bytes]:
        """One key per record, in order; records with equal keys land in the same partition."""
        raise NotImplementedError(f"{self.name} does not run partitioned")

    def reduce_partition(self, entries: Iterator[tuple[Any, bytes]], ctx: StageContext) -> Iterator[Any]:
        """The positions to drop, from one partition's (position, key) entries given in input order (a large
        partition comes in one call per bucket of its keys; equal keys always share a call)."""
        raise NotImplementedError(f"{self.name} does not run partitioned")
