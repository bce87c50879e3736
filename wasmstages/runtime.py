"""Run one batch through a WebAssembly stage module in a fresh, bounded sandbox (wasmtime).

One engine per process, with fuel (CPU) and epoch interruption (wall time) on. Compiled modules are cached
per process by sha256, so a new version is compiled the first time a run pins it and no worker restarts.
Each batch gets its own store and instance: nothing a module keeps survives into another batch, and a
failure of one batch leaves the others alone.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
import wasmtime
from django.utils.translation import gettext as _

from dataflare_portal.core.logging import redact
from pipelines.stagekinds.textutil import mask_pii

from .abi import ALL_CAPABILITIES, WASI, AbiError, abi_check

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

    record_index: int | None = None  # the record of the batch that fails on its own, when one was found
    module_log: str = ""


@dataclass
class BatchOutput:
    """What the module said about each input record, in order."""

    records: list[dict] = field(default_factory=list)
    filtered: int = 0
    # (index, code, reason)
    quarantined: list[tuple[int, str, str]] = field(default_factory=list)
    fuel_used: int = 0
    startup_seconds: float = 0.0
    # what the module wrote to stdout/stderr (capability `log`), at most LOG_BYTES
    log: str = ""


# ---- engine, epoch ticker and the compiled-module cache (per process) ------------------------
_engine: wasmtime.Engine | None = None
_engine_lock = threading.Lock()
_cache: OrderedDict[str, wasmtime.Module] = OrderedDict()
_cache_lock = threading.Lock()
_pid = None


def engine() -> wasmtime.Engine:
    """The process's engine (fuel and epochs on); a forked worker child makes its own, with its own ticker."""
    global _engine, _pid
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
    abi_check(module, granted=ALL_CAPABILITIES)  # the stage's own grant is checked per batch (run_batch)
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
    return _payload(orjson.dumps(module_config or {}), [orjson.dumps(r) for r in records])


def _payload(config_line: bytes, lines: list[bytes]) -> bytes:
    return b"\n".join([config_line, *lines]) + b"\n"


def _describe_record(records: list[dict], index: int) -> str:
    record = records[index] if 0 <= index < len(records) else None
    if isinstance(record, dict) and "id" in record and isinstance(record["id"], (str, int)):
        return _("record %(n)s (id %(id)s)") % {"n": index, "id": redact(str(record["id"]))[:80]}
    return _("record %(n)s") % {"n": index}


EXCERPT_CHARS = 120
# Names of fields (in an excerpt) and variables (a stage's env) that hold secrets.
SECRET_NAME = re.compile(
    r"(?i)pass(word|wd)?|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|auth|cookie|credential"
)


def _without_secret_fields(value, depth: int = 0):
    if depth > 20:
        return "…"
    if isinstance(value, dict):
        return {
            k: "[redacted]" if isinstance(k, str) and SECRET_NAME.search(k) else _without_secret_fields(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_without_secret_fields(v, depth + 1) for v in value]
    return value


def record_excerpt(record) -> str:
    """A short excerpt of a record for an error message: secret-named fields, secret shapes and personal data
    (e-mail, ID card, IP, phone) masked before it is cut, so a cut never leaves half a secret behind."""
    text = orjson.dumps(_without_secret_fields(record)).decode()[: EXCERPT_CHARS * 40]
    text = mask_pii(redact(text))[0]
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"


# Capturing a module's stdout/stderr (capability `log`): at most this much is kept per batch.
LOG_BYTES = 16 * 1024


class _Log:
    """What a module wrote to stdout and stderr, the first LOG_BYTES kept and the rest counted."""

    def __init__(self) -> None:
        self.kept = bytearray()
        self.dropped = 0

    def write(self, data: bytes, length: int) -> None:
        """`length` bytes were written, of which `data` is the part there was room for."""
        self.kept += data[: max(0, LOG_BYTES - len(self.kept))]
        self.dropped += length - len(data)

    def text(self) -> str:
        out = bytes(self.kept).decode("utf-8", "replace")
        if self.dropped:
            out += "\n" + _("[%(n)s more bytes not kept]") % {"n": self.dropped}
        return out


# ---- the granted WASI functions (abi.CAPABILITIES) ---------------------------------------------
# They are host functions of ours, not wasmtime's WasiConfig: its captured stdout/stderr is written from a
# background (tokio) thread that calls into Python and aborts the interpreter at exit, and a WASI context
# brings far more than the six functions we grant. These are synchronous, bounded, and touch nothing but the
# module's own memory: the clocks, the random source, a per-batch log buffer and the stage's `env`.
ERRNO_SUCCESS, ERRNO_BADF, ERRNO_FAULT, ERRNO_INVAL = 0, 8, 21, 28
_batch = threading.local()  # the log of the batch this thread is running (run_batch is one batch per thread)


def _memory(caller) -> wasmtime.Memory | None:
    memory = caller.get("memory")
    return memory if isinstance(memory, wasmtime.Memory) else None


def _fits(memory, caller, ptr: int, length: int) -> bool:
    return ptr >= 0 and length >= 0 and ptr + length <= memory.data_len(caller)


def _clock_time_get(caller, clock_id: int, _precision: int, out: int) -> int:
    memory = _memory(caller)
    if memory is None or not _fits(memory, caller, out, 8):
        return ERRNO_FAULT
    if clock_id == 0:
        now = time.time_ns()
    elif clock_id == 1:
        now = time.monotonic_ns()
    else:
        return ERRNO_INVAL  # process and thread CPU clocks are not offered
    memory.write(caller, now.to_bytes(8, "little"), out)
    return ERRNO_SUCCESS


def _clock_res_get(caller, clock_id: int, out: int) -> int:
    memory = _memory(caller)
    if memory is None or not _fits(memory, caller, out, 8):
        return ERRNO_FAULT
    if clock_id not in (0, 1):
        return ERRNO_INVAL
    memory.write(caller, (1000).to_bytes(8, "little"), out)  # a microsecond
    return ERRNO_SUCCESS


def _random_get(caller, buf: int, length: int) -> int:
    memory = _memory(caller)
    if memory is None or not _fits(memory, caller, buf, length):
        return ERRNO_FAULT
    memory.write(caller, os.urandom(length), buf)
    return ERRNO_SUCCESS


def _fd_write(caller, fd: int, iovs: int, iovs_len: int, nwritten: int) -> int:
    memory = _memory(caller)
    if memory is None:
        return ERRNO_FAULT
    if fd not in (1, 2):
        return ERRNO_BADF  # stdout and stderr only: there is no file system
    if iovs_len < 0 or not _fits(memory, caller, iovs, 8 * iovs_len) or not _fits(memory, caller, nwritten, 4):
        return ERRNO_FAULT
    log = getattr(_batch, "log", None)
    raw = memory.read(caller, iovs, iovs + 8 * iovs_len)
    total = 0
    for k in range(iovs_len):
        ptr = int.from_bytes(raw[8 * k : 8 * k + 4], "little")
        length = int.from_bytes(raw[8 * k + 4 : 8 * k + 8], "little")
        if not _fits(memory, caller, ptr, length):
            return ERRNO_FAULT
        if log is not None:
            # only what the log still has room for is read: a module writing without end costs its fuel
            room = max(0, LOG_BYTES - len(log.kept))
            log.write(bytes(memory.read(caller, ptr, ptr + min(length, room))) if room else b"", length)
        total += length
    memory.write(caller, (total & 0xFFFFFFFF).to_bytes(4, "little"), nwritten)
    return ERRNO_SUCCESS


def _environ_sizes_get(caller, count_out: int, size_out: int) -> int:
    memory = _memory(caller)
    if memory is None or not _fits(memory, caller, count_out, 4) or not _fits(memory, caller, size_out, 4):
        return ERRNO_FAULT
    env = getattr(_batch, "env", None) or []
    memory.write(caller, len(env).to_bytes(4, "little"), count_out)
    memory.write(caller, sum(len(v) for v in env).to_bytes(4, "little"), size_out)
    return ERRNO_SUCCESS


def _environ_get(caller, pointers: int, buf: int) -> int:
    memory = _memory(caller)
    env = getattr(_batch, "env", None) or []
    if memory is None or not _fits(memory, caller, pointers, 4 * len(env)):
        return ERRNO_FAULT
    if not _fits(memory, caller, buf, sum(len(v) for v in env)):
        return ERRNO_FAULT
    for k, value in enumerate(env):
        memory.write(caller, buf.to_bytes(4, "little"), pointers + 4 * k)
        memory.write(caller, value, buf)
        buf += len(value)
    return ERRNO_SUCCESS


def env_entries(env: dict | None) -> list[bytes]:
    """The stage's `env` as WASI hands it over: b"NAME=value\\0" each, in the config's order."""
    return [f"{name}={value}".encode() + b"\0" for name, value in (env or {}).items()]


_I32, _I64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
_HOST_FUNCS = {
    "clock_time_get": (wasmtime.FuncType([_I32, _I64, _I32], [_I32]), _clock_time_get),
    "clock_res_get": (wasmtime.FuncType([_I32, _I32], [_I32]), _clock_res_get),
    "random_get": (wasmtime.FuncType([_I32, _I32], [_I32]), _random_get),
    "fd_write": (wasmtime.FuncType([_I32, _I32, _I32, _I32], [_I32]), _fd_write),
    "environ_sizes_get": (wasmtime.FuncType([_I32, _I32], [_I32]), _environ_sizes_get),
    "environ_get": (wasmtime.FuncType([_I32, _I32], [_I32]), _environ_get),
}
_linker: wasmtime.Linker | None = None
_linker_engine: wasmtime.Engine | None = None


def wasi_linker() -> wasmtime.Linker:
    """A linker defining every capability's functions, for modules that import them (per engine); abi_check
    has already refused a module importing what its stage does not grant."""
    global _linker, _linker_engine
    eng = engine()
    with _engine_lock:
        if _linker is None or _linker_engine is not eng:
            linker = wasmtime.Linker(eng)
            for name, (ty, func) in _HOST_FUNCS.items():
                linker.define_func(WASI, name, ty, func, access_caller=True)
            _linker, _linker_engine = linker, eng
        return _linker


class _InModule(Exception):  # noqa: N818 - a verdict about the module, turned into WasmStageError by run_batch
    """The module failed while running (trap, fuel, wall time, memory): what a record can cause."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class _Raw:
    raw: bytes
    fuel_used: int
    startup: float


def _execute(
    module, payload: bytes, n: int, lim: dict, *, wasi: bool, log: _Log | None, env: list[bytes] | None = None
) -> _Raw:
    """One fresh store and instance, `process` called once; raises _InModule for a failure inside the module
    and WasmStageError (message without the label) for a bad result."""
    started = time.perf_counter()
    store = wasmtime.Store(engine())
    _batch.log, _batch.env = log, env
    try:
        return _execute_in(store, started, module, payload, n, lim, wasi=wasi)
    finally:
        # Freed now, not when the garbage collector gets to it: a failure's traceback holds the store in a
        # reference cycle, and a failed batch's search runs up to 2*log2(n)+2 more of them, each with its memory
        # filled to the limit (seen: 3 failed batches of a memory bomb held 700 MiB until gc.collect()).
        _batch.log = _batch.env = None
        store.close()


def _execute_in(store, started: float, module, payload: bytes, n: int, lim: dict, *, wasi: bool) -> _Raw:
    store.set_limits(memory_size=int(lim["memory_pages"]) * PAGE, instances=1, memories=1, tables=1)
    store.set_fuel(int(lim["fuel"]))
    store.set_epoch_deadline(max(1, int(lim["wall_seconds"] / EPOCH_TICK)))
    memory = None

    def trapped(exc: Exception) -> _InModule:
        code = getattr(exc, "trap_code", None)
        if code == wasmtime.TrapCode.OUT_OF_FUEL:
            return _InModule(
                _("used up its fuel (%(fuel)s instructions, limit `fuel`) on a batch of %(n)s records.")
                % {"fuel": lim["fuel"], "n": n}
            )
        if code == wasmtime.TrapCode.INTERRUPT:
            return _InModule(
                _("ran longer than %(s)s s (limit `wall_seconds`) on a batch of %(n)s records.")
                % {"s": lim["wall_seconds"], "n": n}
            )
        if memory is not None and memory.size(store) >= int(lim["memory_pages"]):
            return _InModule(
                _("trapped after reaching its memory limit of %(pages)s pages (limit `memory_pages`): %(trap)s")
                % {"pages": lim["memory_pages"], "trap": _first_line(exc)}
            )
        return _InModule(_("trapped: %(trap)s") % {"trap": _first_line(exc)})

    try:
        try:
            instance = wasi_linker().instantiate(store, module) if wasi else wasmtime.Instance(store, module, [])
        except wasmtime.WasmtimeError as exc:
            if "memory" in str(exc).lower():
                raise WasmStageError(
                    _("its initial memory does not fit the limit of %(pages)s pages (limit `memory_pages`).")
                    % {"pages": lim["memory_pages"]}
                ) from None
            raise trapped(exc) from None
        exports = instance.exports(store)
        memory = exports["memory"]
        startup = time.perf_counter() - started
        ptr = exports["alloc"](store, len(payload))
        if not isinstance(ptr, int) or ptr <= 0 or (ptr & 0xFFFFFFFF) + len(payload) > memory.data_len(store):
            raise _InModule(
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
        raise WasmStageError(
            _("returned %(bytes)s bytes for %(n)s records, more than the limit of %(limit)s (limit `output_bytes`).")
            % {"bytes": out_len, "n": n, "limit": lim["output_bytes"]}
        )
    if out_ptr + out_len > memory.data_len(store):
        raise WasmStageError(
            _("returned output outside its memory (pointer %(p)s, length %(l)s).") % {"p": out_ptr, "l": out_len}
        )
    raw = bytes(memory.read(store, out_ptr, out_ptr + out_len))
    return _Raw(raw=raw, fuel_used=int(lim["fuel"]) - store.get_fuel(), startup=startup)


# ---- finding the record that makes a batch fail -----------------------------------------------
# A failure inside the module (trap, fuel, wall time, memory) is re-tried on parts of the batch, each in a fresh
# sandbox: first an empty batch (a module that fails on that fails whatever the records), then halves, keeping
# the half that fails, down to one record, which is run once more with the stage's full limits to confirm it
# fails on its own. The probes at depth d get the limits' fuel and wall time divided by 2**d (never more than
# the stage's limits, never below a floor), so the whole search costs at most 3.5 times the batch's own fuel
# and wall time plus the floors once per run, in at most 2 * ceil(log2 n) + 2 runs; memory keeps the stage's
# limit. A record that loops forever thus costs each run only that run's share.
PROBE_FUEL_FLOOR = 10_000_000
PROBE_WALL_FLOOR = 0.2


@dataclass
class Isolation:
    """What the search found: the index of the record that fails alone, or why there is none."""

    index: int | None
    verdict: str  # "record", "empty" (fails without records), "together" (no single record fails alone)
    probes: int = 0


def _probe_limits(lim: dict, depth: int) -> dict:
    scale = 2**depth
    return {
        **lim,
        "fuel": min(int(lim["fuel"]), max(int(lim["fuel"]) // scale, PROBE_FUEL_FLOOR)),
        "wall_seconds": min(float(lim["wall_seconds"]), max(float(lim["wall_seconds"]) / scale, PROBE_WALL_FLOOR)),
    }


def isolate_record(
    module, config_line: bytes, lines: list[bytes], lim: dict, *, wasi: bool, env: list[bytes] | None = None
) -> Isolation:
    """Find the one record of `lines` on which the module fails by itself (see the banner above)."""
    probes = 0

    def fails(indexes: range, depth: int) -> bool:
        nonlocal probes
        probes += 1
        payload = _payload(config_line, [lines[i] for i in indexes])
        try:
            _execute(module, payload, len(indexes), _probe_limits(lim, depth), wasi=wasi, log=None, env=env)
        except _InModule:
            return True
        except WasmStageError:
            return False  # it ran to the end; what it returned is not this search's question
        return False

    if fails(range(0), 1):
        return Isolation(None, "empty", probes)
    part, depth = range(len(lines)), 1
    while len(part) > 1:
        half = len(part) // 2
        left, right = part[:half], part[half:]
        if fails(left, depth):
            part = left
        elif fails(right, depth):
            part = right
        else:
            return Isolation(None, "together", probes)
        depth += 1
    # Confirm with the stage's own limits: a record that passes with them fails only together with others.
    if len(lines) > 1 and not fails(part, 0):
        return Isolation(None, "together", probes)
    return Isolation(part[0], "record", probes)


def run_batch(
    module: wasmtime.Module,
    records: list[dict],
    *,
    label: str,
    module_config: dict | None = None,
    limits: dict | None = None,
    capabilities=(),
    env: dict | None = None,
    isolate: bool = True,
) -> BatchOutput:
    """Run `records` through `module` in a fresh store; raise WasmStageError naming `label` (name@version) and,
    for a failure inside the module, the record that causes it (isolate_record)."""
    lim = limits_of(limits)
    granted = frozenset(capabilities or ())
    wasi = bool(module.imports)
    if wasi:  # a module without imports needs no grant (module_for checked its exports when it compiled it)
        try:
            abi_check(module, granted=granted)
        except AbiError as exc:
            raise WasmStageError(_("Module %(label)s: %(message)s") % {"label": label, "message": str(exc)}) from None
    config_line = orjson.dumps(module_config or {})
    lines = [orjson.dumps(r) for r in records]
    payload = _payload(config_line, lines)
    log = _Log() if "log" in granted else None
    environ = env_entries(env) if "env" in granted else []

    def fail(message: str, *, record: int | None = None, extra: str = "") -> WasmStageError:
        text = _("Module %(label)s: %(message)s") % {"label": label, "message": message}
        if extra:
            text = f"{text}{'' if text.endswith('.') else '.'} {extra}"
        if log is not None and (log.kept or log.dropped):
            text += "\n" + _("Module log:") + "\n" + log.text()[-2000:]
        error = WasmStageError(text)
        error.record_index = record
        error.module_log = log.text() if log is not None else ""
        return error

    try:
        raw = _execute(module, payload, len(records), lim, wasi=wasi, log=log, env=environ)
    except _InModule as exc:
        if not isolate or not records:
            raise fail(exc.message) from None
        found = isolate_record(module, config_line, lines, lim, wasi=wasi, env=environ)
        if found.verdict == "empty":
            extra = _("It fails the same way on an empty batch, so no record is the cause.")
        elif found.verdict == "together":
            extra = _(
                "No single record fails on its own within the same limits: the records fail together "
                "(a smaller batch size or higher limits may pass)."
            )
        else:
            extra = _("The record that fails on its own (fresh sandbox, same limits) is %(record)s: %(excerpt)s") % {
                "record": _describe_record(records, found.index),
                "excerpt": record_excerpt(records[found.index]),
            }
        raise fail(exc.message, record=found.index, extra=extra) from None
    except WasmStageError as exc:
        raise fail(str(exc)) from None
    result = parse_output(raw.raw, records, fail)
    result.fuel_used = raw.fuel_used
    result.startup_seconds = raw.startup
    result.log = log.text() if log is not None else ""
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
