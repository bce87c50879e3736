"""The stage ABI a WebAssembly module must follow (docs/wasm-stages.md), and its check at upload.

A module exports `memory`, `alloc(len: i32) -> i32` and `process(ptr: i32, len: i32) -> i64`; it imports
nothing, unless a stage grants it a named capability (none exist yet, so every import is refused).
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

# Named capabilities a stage config may grant, each with the imports it allows. None is offered yet: a
# module that imports anything (WASI's file system, clock, random, environment) is refused at upload.
CAPABILITIES: dict[str, frozenset[tuple[str, str]]] = {}


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
        if (item.module, item.name) not in allowed:
            raise AbiError(
                _(
                    "The module imports %(name)s (%(what)s). A stage module may import nothing: it gets no file "
                    "system, network, clock or environment (no WASI), and no capability grants this import. "
                    "Build it without a runtime that needs the host (docs/wasm-stages.md)."
                )
                % {"name": f"{item.module}.{item.name}", "what": _kind_label(item.type)}
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
