"""The stage ABI a WebAssembly module must follow (docs/wasm-stages.md), and its check at upload.

A module exports `memory`, `alloc(len: i32) -> i32` and `process(ptr: i32, len: i32) -> i64`; it imports
nothing, unless a stage grants it a named capability (CAPABILITIES), each of which allows a few WASI functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import wasmtime
from django.utils.translation import gettext as _

ABI_VERSION = 1

# export name -> (params, results) as wasmtime prints value types
REQUIRED_FUNCS = {
    "alloc": (["i32"], ["i32"]),
    "process": (["i32", "i32"], ["i64"]),
}

WASI = "wasi_snapshot_preview1"

# Named capabilities a stage config may grant, each with the WASI functions it allows. Nothing else of WASI is
# ever granted: no file system (no preopened folder), no network, no worker environment, no arguments, no exit. A
# module importing anything outside these is refused at upload; one importing a capability's functions is
# accepted at upload and refused at run start unless its stage grants that capability.
CAPABILITIES: dict[str, frozenset[tuple[str, str]]] = {
    # the wall clock and the monotonic clock, read-only
    "clock": frozenset({(WASI, "clock_time_get"), (WASI, "clock_res_get")}),
    # the host's cryptographic random source
    "random": frozenset({(WASI, "random_get")}),
    # writes to stdout (fd 1) and stderr (fd 2), captured size-limited into the worker's log and a failed
    # batch's error; any other descriptor is EBADF
    "log": frozenset({(WASI, "fd_write")}),
    # the variables the stage config lists under `env` (names and values written there, never the worker's)
    "env": frozenset({(WASI, "environ_sizes_get"), (WASI, "environ_get")}),
}
ALL_CAPABILITIES = frozenset(CAPABILITIES)


def capability_for(module: str, name: str) -> str | None:
    """The capability that allows this import, or None when none does."""
    for capability, imports in CAPABILITIES.items():
        if (module, name) in imports:
            return capability
    return None


def capabilities_needed(imports) -> dict[str, str]:
    """import ("module.name") -> the capability it needs, for every import some capability allows."""
    out = {}
    for full in imports:
        module, _dot, name = str(full).partition(".")
        capability = capability_for(module, name)
        if capability is not None:
            out[full] = capability
    return out


class AbiError(ValueError):
    """The module does not follow the stage ABI; the message says what to change."""


@dataclass(frozen=True)
class AbiReport:
    """What the check saw: the module's exports and imports, for the upload record."""

    exports: tuple[str, ...]
    imports: tuple[str, ...]


def _kind_label(extern_type) -> str:
    if isinstance(extern_type, wasmtime.FuncType):
        return _("a function")
    if isinstance(extern_type, wasmtime.MemoryType):
        return _("a memory")
    if isinstance(extern_type, wasmtime.TableType):
        return _("a table")
    if isinstance(extern_type, wasmtime.GlobalType):
        return _("a global")
    return _("an item")


def abi_check(module: wasmtime.Module, *, granted: frozenset[str] = frozenset()) -> AbiReport:
    """Raise AbiError unless `module` exports the ABI and imports only what `granted` capabilities allow."""
    allowed: set[tuple[str, str]] = set()
    for name in granted:
        allowed |= CAPABILITIES.get(name, frozenset())
    imports = tuple(f"{item.module}.{item.name}" for item in module.imports)
    for item in module.imports:
        if (item.module, item.name) in allowed:
            continue
        full = f"{item.module}.{item.name}"
        capability = capability_for(item.module, item.name)
        if capability is not None and isinstance(item.type, wasmtime.FuncType):
            raise AbiError(
                _(
                    "The module imports %(name)s, which needs the capability `%(capability)s`; the stage does "
                    'not grant it. Add "%(capability)s" to the stage\'s capabilities, or build the module '
                    "without it (docs/wasm-stages.md)."
                )
                % {"name": full, "capability": capability}
            )
        raise AbiError(
            _(
                "The module imports %(name)s (%(what)s). A stage module gets no file system, network or "
                "environment, and no capability grants this import (the capabilities are %(capabilities)s). "
                "Build it without a runtime that needs the host (docs/wasm-stages.md)."
            )
            % {"name": full, "what": _kind_label(item.type), "capabilities": ", ".join(sorted(CAPABILITIES))}
        )
    exports = {item.name: item.type for item in module.exports}
    memory = exports.get("memory")
    if not isinstance(memory, wasmtime.MemoryType):
        raise AbiError(_("The module does not export its memory as `memory`."))
    if memory.is_64:
        raise AbiError(_("The module's memory is 64-bit; the stage ABI uses a 32-bit memory."))
    for name, (params, results) in REQUIRED_FUNCS.items():
        func = exports.get(name)
        want = f"{name}({', '.join(params)}) -> {', '.join(results)}"
        if not isinstance(func, wasmtime.FuncType):
            raise AbiError(_("The module does not export the function %(want)s.") % {"want": want})
        got_params = [str(t) for t in func.params]
        got_results = [str(t) for t in func.results]
        if got_params != params or got_results != results:
            got = f"{name}({', '.join(got_params)}) -> {', '.join(got_results)}"
            raise AbiError(_("The module exports %(got)s; the stage ABI needs %(want)s.") % {"got": got, "want": want})
    return AbiReport(exports=tuple(sorted(exports)), imports=imports)
