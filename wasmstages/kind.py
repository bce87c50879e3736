"""The `wasm` stage kind: records of a batch through an uploaded WebAssembly module, in a bounded sandbox."""

from __future__ import annotations

import logging

from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from pipelines.stagekinds import PerRecordStageKind, Quarantine, StageConfigError, StageContext, StageResult

from . import runtime
from .abi import CAPABILITIES, capabilities_needed
from .models import NAME_RE

logger = logging.getLogger("wasmstages.module")
ENV_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"

_LIMITS = {
    "type": "object",
    "title": _("Limits per batch"),
    "properties": {
        "fuel": {
            "type": "integer",
            "minimum": 1000,
            "maximum": runtime.MAX_LIMITS["fuel"],
            "default": runtime.DEFAULT_LIMITS["fuel"],
            "title": _("Fuel (instructions)"),
        },
        "memory_pages": {
            "type": "integer",
            "minimum": 1,
            "maximum": runtime.MAX_LIMITS["memory_pages"],
            "default": runtime.DEFAULT_LIMITS["memory_pages"],
            "title": _("Memory (64 KiB pages)"),
        },
        "output_bytes": {
            "type": "integer",
            "minimum": 1,
            "maximum": runtime.MAX_LIMITS["output_bytes"],
            "default": runtime.DEFAULT_LIMITS["output_bytes"],
            "title": _("Output size (bytes)"),
        },
        "wall_seconds": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": runtime.MAX_LIMITS["wall_seconds"],
            "default": runtime.DEFAULT_LIMITS["wall_seconds"],
            "title": _("Wall time (seconds)"),
        },
    },
    "additionalProperties": False,
}


def _check_grant(row, config: dict) -> None:
    """Refuse a stage whose module imports a capability's functions that the stage does not grant."""
    granted = set(config.get("capabilities") or ())
    for name, capability in capabilities_needed(row.imports or ()).items():
        if capability not in granted:
            raise StageConfigError(
                gettext(
                    "%(label)s imports %(name)s, which needs the capability `%(capability)s`; add it to the "
                    "stage's capabilities to grant it."
                )
                % {"label": row.label, "name": name, "capability": capability},
                "$.capabilities",
            )


class WasmKind(PerRecordStageKind):
    """Runs an uploaded module (docs/wasm-stages.md) on each batch; its version is fixed when a run starts."""

    name = "wasm"
    label = _("WebAssembly module")
    description = _("Run an uploaded WebAssembly module on each batch, sandboxed and bounded.")
    config_schema = {
        "type": "object",
        "properties": {
            "module": {"type": "string", "pattern": NAME_RE, "title": _("Module")},
            "version": {
                # integer-or-string: the config form offers it as one text box ("3" becomes 3)
                "oneOf": [{"type": "integer", "minimum": 1}, {"type": "string", "const": "latest"}],
                "default": "latest",
                "title": _("Version"),
                "description": _("A version number, or latest: the highest version when a run starts."),
            },
            "sha256": {
                "type": "string",
                "pattern": "^[0-9a-f]{64}$",
                "title": _("sha256"),
                "description": _("Filled in when a run starts; set it to insist on these exact bytes."),
            },
            "config": {"type": "object", "default": {}, "title": _("Module config")},
            "limits": _LIMITS,
            "find_record": {
                "type": "boolean",
                "default": True,
                "title": _("Name the record that fails"),
                "description": _(
                    "When the module fails inside a batch, re-run parts of it in fresh sandboxes to find the record "
                    "that causes it (at most about 3.5 times the batch's fuel and wall time more)."
                ),
            },
            "capabilities": {
                "type": "array",
                "items": {
                    "enum": sorted(CAPABILITIES),
                    "x-enumLabels": {
                        "clock": _("clock: read the wall and monotonic clocks"),
                        "log": _("log: write to stdout/stderr, kept in the worker's log"),
                        "random": _("random: read random bytes"),
                        "env": _("env: read the variables listed below"),
                    },
                },
                "uniqueItems": True,
                "default": [],
                "title": _("Capabilities granted"),
                "description": _(
                    "WASI functions the module may import. Never a file system, a network or the worker's environment."
                ),
            },
            "env": {
                "type": "object",
                "propertyNames": {"pattern": ENV_NAME_RE},
                "additionalProperties": {"type": "string", "maxLength": 1024},
                "maxProperties": 32,
                "default": {},
                "title": _("Environment variables (capability env)"),
                "description": _(
                    "Names and values the module reads as its environment; never the worker's own, never secrets."
                ),
            },
        },
        "required": ["module"],
        "additionalProperties": False,
    }

    def check_config(self, config: dict) -> None:
        from .services import module_resolve

        for i, name in enumerate(config.get("capabilities") or []):
            if name not in CAPABILITIES:
                raise StageConfigError(
                    gettext("No capability is called %(name)s; the capabilities are %(names)s.")
                    % {"name": name, "names": ", ".join(sorted(CAPABILITIES))},
                    f"$.capabilities[{i}]",
                )
        env = config.get("env") or {}
        if env and "env" not in (config.get("capabilities") or ()):
            raise StageConfigError(
                gettext("Variables are listed but the capability env is not granted; grant it or remove them."),
                "$.env",
            )
        for name in env:
            if runtime.SECRET_NAME.search(name):
                raise StageConfigError(
                    gettext(
                        "%(name)s looks like the name of a secret; a module's environment is part of the pipeline's "
                        "config, visible to everyone who can read it."
                    )
                    % {"name": name},
                    f"$.env.{name}",
                )
        version = config.get("version", "latest")
        try:
            row = module_resolve(config["module"], version)
        except LookupError:
            if version == "latest":
                raise StageConfigError(
                    gettext("No module called %(name)s has been uploaded.") % {"name": config["module"]}, "$.module"
                ) from None
            raise StageConfigError(
                gettext("Module %(name)s has no version %(version)s.") % {"name": config["module"], "version": version},
                "$.version",
            ) from None
        sha = config.get("sha256")
        if sha and sha != row.sha256 and version != "latest":
            raise StageConfigError(
                gettext("%(label)s has sha256 %(sha)s, not this one.") % {"label": row.label, "sha": row.sha256},
                "$.sha256",
            )
        _check_grant(row, config)

    def resolve_for_run(self, config: dict) -> dict:
        """Fix the module version (latest -> a number) and its sha256 for the whole run."""
        from .services import module_resolve

        try:
            row = module_resolve(config["module"], config.get("version", "latest"))
        except LookupError:
            raise StageConfigError(
                gettext("Module %(name)s has no version %(version)s.")
                % {"name": config.get("module"), "version": config.get("version", "latest")},
                "$.version",
            ) from None
        if config.get("sha256") and config["sha256"] != row.sha256:
            raise StageConfigError(
                gettext("%(label)s has sha256 %(sha)s, not this one.") % {"label": row.label, "sha": row.sha256},
                "$.sha256",
            )
        _check_grant(row, config)
        return {**config, "version": row.version, "sha256": row.sha256}

    def process(self, records: list[dict], ctx: StageContext) -> StageResult:
        from .services import module_bytes

        config = ctx.config if ctx.config.get("sha256") else self.resolve_for_run(ctx.config)
        sha = config["sha256"]
        label = f"{config['module']}@{config['version']}"
        module = runtime.module_for(sha, lambda: module_bytes(sha))
        out = runtime.run_batch(
            module,
            records,
            label=label,
            module_config=config.get("config") or {},
            limits=config.get("limits"),
            capabilities=config.get("capabilities") or (),
            env=config.get("env"),
            isolate=config.get("find_record", True),
        )
        if out.log:
            logger.info(
                "wasm module %s (run %s, stage %s, batch %s) wrote:\n%s",
                label,
                ctx.run_id,
                ctx.stage_key,
                ctx.batch_index,
                out.log,
            )
        return StageResult(
            records=out.records,
            filtered=out.filtered,
            quarantined=[
                Quarantine(index=i, code=code, reason=reason, record=records[i]) for i, code, reason in out.quarantined
            ],
        )
