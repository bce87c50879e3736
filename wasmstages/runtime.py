"""Run one batch through a WebAssembly stage module in a fresh, bounded sandbox (wasmtime).

One engine per process, with fuel (CPU) and epoch interruption (wall time) on. Compiled modules are cached
per process by sha256, so a new version is compiled the first time a run pins it and no worker restarts.
Each batch gets its own store and instance: nothing a module keeps survives into another batch, and a
failure of one batch leaves the others alone.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
import wasmtime
from django.utils.translation import gettext as _

from .abi import abi_check

PAGE = 65536
EPOCH_TICK = 0.01  # seconds per epoch increment; wall-time deadlines are counted in ticks

# Safe defaults and the ceilings an operator may raise them to (docs/wasm-stages.md "Limits").
DEFAULT_LIMITS = {
    "fuel": 5_000_000_000,
    "memory_pages": 1024,  # 64 MiB
    "output_bytes": 64 * 1024 * 1024,
    "wall_seconds": 30.0,
}
MAX_LIMITS = {
    "fuel": 1_000_000_000_000,
    "memory_pages": 16384,  # 1 GiB
    "output_bytes": 1024 * 1024 * 1024,
    "wall_seconds": 600.0,
}
CACHE_SIZE = 32


class WasmStageError(RuntimeError):
    """A batch failed inside (or because of) a module; the message names the module version and the record."""


@dataclass
class BatchOutput:
    """What the module said about each input record, in order."""

    records: list[dict] = field(default_factory=list)
    filtered: int = 0
    # (index, code, reason)
    quarantined: list[tuple[int, str, str]] = field(default_factory=list)
    fuel_used: int = 0
    startup_seconds: float = 0.0


# ---- engine, epoch ticker and the compiled-module cache (per process) ------------------------
_engine: wasmtime.Engine | None = None
_engine_lock = threading.Lock()
_cache: OrderedDict[str, wasmtime.Module] = OrderedDict()
_cache_lock = threading.Lock()
_pid = None


def engine() -> wasmtime.Engine:
    """The process's engine (fuel and epochs on); a forked worker child makes its own, with its own ticker."""
    global _engine, _pid
    import os

    with _engine_lock:
        if _engine is None or _pid != os.getpid():
            config = wasmtime.Config()
            config.consume_fuel = True
            config.epoch_interruption = True
            # Bounded native stack for deep recursion in a module: it traps instead of growing.
            config.max_wasm_stack = 512 * 1024
            _engine = wasmtime.Engine(config)
            _pid = os.getpid()
            _cache.clear()
            threading.Thread(target=_tick, args=(_engine,), name="wasm-epoch", daemon=True).start()
        return _engine


def _tick(eng: wasmtime.Engine) -> None:
    while eng is _engine:
        time.sleep(EPOCH_TICK)
        eng.increment_epoch()


def compile_module(content: bytes) -> wasmtime.Module:
    """Compile bytes with the process's engine (raises wasmtime.WasmtimeError for bytes that are not a module)."""
    return wasmtime.Module(engine(), content)


def module_for(sha256: str, load: Callable[[], bytes]) -> wasmtime.Module:
    """The compiled module with this digest: from the per-process cache, else `load()`ed, checked and compiled."""
    eng = engine()
    with _cache_lock:
        hit = _cache.get(sha256)
        if hit is not None:
            _cache.move_to_end(sha256)
            return hit
    import hashlib

    content = load()
    if hashlib.sha256(content).hexdigest() != sha256:
        raise WasmStageError(_("The stored module does not match its sha256 %(sha)s.") % {"sha": sha256})
    module = wasmtime.Module(eng, content)
    abi_check(module)
    with _cache_lock:
        _cache[sha256] = module
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return module


def cache_clear() -> None:
    """Forget every compiled module of this process (tests)."""
    with _cache_lock:
        _cache.clear()


def cached_digests() -> list[str]:
    """The digests compiled in this process, least recently used first (tests, the workers page)."""
    with _cache_lock:
        return list(_cache)


# ---- one batch --------------------------------------------------------------------------------
def limits_of(config: dict | None) -> dict:
    """The stage's limits with defaults filled in and ceilings applied."""
    out = dict(DEFAULT_LIMITS)
    for key, value in (config or {}).items():
        if key in out and value is not None:
            out[key] = min(type(out[key])(value), type(out[key])(MAX_LIMITS[key]))
    return out


def encode_input(records: list[dict], module_config: dict) -> bytes:
    """Line 1: the module's config; then one record a line (UTF-8 JSON, no raw newlines inside a line)."""
    parts = [orjson.dumps(module_config or {})]
    parts.extend(orjson.dumps(r) for r in records)
    return b"\n".join(parts) + b"\n"


def _describe_record(records: list[dict], index: int) -> str:
    record = records[index] if 0 <= index < len(records) else None
    if isinstance(record, dict) and "id" in record and isinstance(record["id"], (str, int)):
        return _("record %(n)s (id %(id)s)") % {"n": index, "id": str(record["id"])[:80]}
    return _("record %(n)s") % {"n": index}


def run_batch(
    module: wasmtime.Module,
    records: list[dict],
    *,
    label: str,
    module_config: dict | None = None,
    limits: dict | None = None,
) -> BatchOutput:
    """Run `records` through `module` in a fresh store; raise WasmStageError naming `label` (name@version)."""
    lim = limits_of(limits)
    eng = engine()
    payload = encode_input(records, module_config or {})
    started = time.perf_counter()
    store = wasmtime.Store(eng)
    store.set_limits(memory_size=int(lim["memory_pages"]) * PAGE, instances=1, memories=1, tables=1)
    store.set_fuel(int(lim["fuel"]))
    store.set_epoch_deadline(max(1, int(lim["wall_seconds"] / EPOCH_TICK)))
    memory = None

    def fail(message: str) -> WasmStageError:
        return WasmStageError(_("Module %(label)s: %(message)s") % {"label": label, "message": message})

    def trapped(exc: Exception) -> WasmStageError:
        code = getattr(exc, "trap_code", None)
        if code == wasmtime.TrapCode.OUT_OF_FUEL:
            return fail(
                _("used up its fuel (%(fuel)s instructions, limit `fuel`) on a batch of %(n)s records.")
                % {"fuel": lim["fuel"], "n": len(records)}
            )
        if code == wasmtime.TrapCode.INTERRUPT:
            return fail(
                _("ran longer than %(s)s s (limit `wall_seconds`) on a batch of %(n)s records.")
                % {"s": lim["wall_seconds"], "n": len(records)}
            )
        at_limit = memory is not None and memory.size(store) >= int(lim["memory_pages"])
        if at_limit:
            return fail(
                _("trapped after reaching its memory limit of %(pages)s pages (limit `memory_pages`): %(trap)s")
                % {"pages": lim["memory_pages"], "trap": _first_line(exc)}
            )
        return fail(_("trapped: %(trap)s") % {"trap": _first_line(exc)})

    try:
        try:
            instance = wasmtime.Instance(store, module, [])
        except wasmtime.WasmtimeError as exc:
            if "memory" in str(exc).lower():
                raise fail(
                    _("its initial memory does not fit the limit of %(pages)s pages (limit `memory_pages`).")
                    % {"pages": lim["memory_pages"]}
                ) from None
            raise trapped(exc) from None
        exports = instance.exports(store)
        memory = exports["memory"]
        startup = time.perf_counter() - started
        ptr = exports["alloc"](store, len(payload))
        if not isinstance(ptr, int) or ptr <= 0 or (ptr & 0xFFFFFFFF) + len(payload) > memory.data_len(store):
            raise fail(
                _("could not allocate %(bytes)s bytes for the batch input (limit `memory_pages` = %(pages)s).")
                % {"bytes": len(payload), "pages": lim["memory_pages"]}
            )
        ptr &= 0xFFFFFFFF
        memory.write(store, payload, ptr)
        packed = exports["process"](store, ptr, len(payload))
    except wasmtime.Trap as exc:
        raise trapped(exc) from None
    except wasmtime.WasmtimeError as exc:
        raise trapped(exc) from None
    packed &= 0xFFFFFFFFFFFFFFFF
    out_ptr, out_len = packed >> 32, packed & 0xFFFFFFFF
    if out_len > lim["output_bytes"]:
        raise fail(
            _("returned %(bytes)s bytes for %(n)s records, more than the limit of %(limit)s (limit `output_bytes`).")
            % {"bytes": out_len, "n": len(records), "limit": lim["output_bytes"]}
        )
    if out_ptr + out_len > memory.data_len(store):
        raise fail(
            _("returned output outside its memory (pointer %(p)s, length %(l)s).") % {"p": out_ptr, "l": out_len}
        )
    raw = bytes(memory.read(store, out_ptr, out_ptr + out_len))
    result = parse_output(raw, records, fail)
    result.fuel_used = int(lim["fuel"]) - store.get_fuel()
    result.startup_seconds = startup
    return result


def _first_line(exc: Exception) -> str:
    """The cause of a wasmtime error ("wasm trap: integer divide by zero"), not its backtrace header."""
    text = str(getattr(exc, "message", None) or exc).strip()
    if "Caused by:" in text:
        text = text.split("Caused by:", 1)[1].strip()
    return text.splitlines()[0].strip()[:300] if text else type(exc).__name__


def parse_output(raw: bytes, records: list[dict], fail: Callable[[str], WasmStageError]) -> BatchOutput:
    """One JSON line per input record, in order: a record, `{"_filtered": reason}` or `{"_quarantined": reason}`."""
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if len(lines) != len(records):
        raise fail(
            _("returned %(got)s output lines for %(n)s input records; the ABI wants one line per record.")
            % {"got": len(lines), "n": len(records)}
        )
    out = BatchOutput()
    for index, line in enumerate(lines):
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise fail(
                _("returned a line that is not JSON for %(record)s: %(error)s")
                % {"record": _describe_record(records, index), "error": str(exc)[:200]}
            ) from None
        if not isinstance(value, dict):
            raise fail(
                _("returned %(type)s, not a JSON object, for %(record)s.")
                % {"type": type(value).__name__, "record": _describe_record(records, index)}
            )
        if "_filtered" in value:
            out.filtered += 1
        elif "_quarantined" in value:
            code = value.get("_code")
            out.quarantined.append(
                (
                    index,
                    str(code)[:64] if isinstance(code, str) and code else "wasm",
                    str(value["_quarantined"])[:1000],
                )
            )
        else:
            out.records.append(value)
    return out
