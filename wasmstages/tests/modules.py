"""WAT sources of test modules (well-behaved and hostile), compiled by wasmtime in the tests."""

from __future__ import annotations

import wasmtime

# A bump allocator that grows memory as needed and returns 0 when it cannot (the ABI's "no memory").
ALLOC = """
  (global $heap (mut i32) (i32.const 1024))
  (func $alloc (export "alloc") (param $n i32) (result i32)
    (local $p i32) (local $end i32) (local $have i32)
    (local.set $p (global.get $heap))
    (local.set $end (i32.add (local.get $p) (local.get $n)))
    (local.set $have (i32.shl (memory.size) (i32.const 16)))
    (if (i32.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq
              (memory.grow (i32.shr_u (i32.add (i32.sub (local.get $end) (local.get $have)) (i32.const 65535))
                                      (i32.const 16)))
              (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $heap (local.get $end))
    (local.get $p))
  ;; length of the first line (the config), newline included
  (func $skip_config (param $p i32) (param $n i32) (result i32)
    (local $i i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $done (i32.eq (i32.load8_u (i32.sub (i32.add (local.get $p) (local.get $i)) (i32.const 1)))
                             (i32.const 10)))
        (br $next)))
    (local.get $i))
  (func $pack (param $p i32) (param $n i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32)) (i64.extend_i32_u (local.get $n))))
"""


def wat(body: str, *, memory: str = '(memory (export "memory") 1)', alloc: bool = True) -> str:
    return f"(module {memory} {ALLOC if alloc else ''} {body})"


# Returns the records as they came (every line after the config line).
ECHO = wat("""
  (func (export "process") (param $p i32) (param $n i32) (result i64)
    (local $skip i32)
    (local.set $skip (call $skip_config (local.get $p) (local.get $n)))
    (call $pack (i32.add (local.get $p) (local.get $skip)) (i32.sub (local.get $n) (local.get $skip))))
""")

# Turns every record into {"_filtered": ...} or {"_quarantined": ...} alternately (one output line per record).
VERDICTS = wat("""
  (data (i32.const 16) "{\\"_filtered\\":\\"too dull\\"}\\n")
  (data (i32.const 41) "{\\"_quarantined\\":\\"looks wrong\\",\\"_code\\":\\"odd\\"}\\n")
  (func (export "process") (param $p i32) (param $n i32) (result i64)
    (local $i i32) (local $lines i32) (local $out i32) (local $o i32) (local $src i32) (local $len i32)
    (local.set $i (call $skip_config (local.get $p) (local.get $n)))
    (local.set $out (call $alloc (i32.mul (local.get $n) (i32.const 2)) ))
    (local.set $o (local.get $out))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (if (i32.eq (i32.load8_u (i32.add (local.get $p) (local.get $i))) (i32.const 10))
          (then
            (if (i32.and (local.get $lines) (i32.const 1))
              (then (local.set $src (i32.const 41)) (local.set $len (i32.const 45)))
              (else (local.set $src (i32.const 16)) (local.set $len (i32.const 25))))
            (memory.copy (local.get $o) (local.get $src) (local.get $len))
            (local.set $o (i32.add (local.get $o) (local.get $len)))
            (local.set $lines (i32.add (local.get $lines) (i32.const 1)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (call $pack (local.get $out) (i32.sub (local.get $o) (local.get $out))))
""")

INFINITE_LOOP = wat("""
  (func (export "process") (param i32 i32) (result i64)
    (loop $forever (br $forever))
    (i64.const 0))
""")

# Grows memory a page at a time and writes into each new page, until memory.grow fails; then traps.
MEMORY_BOMB = wat("""
  (func (export "process") (param i32 i32) (result i64)
    (local $page i32)
    (loop $more
      (local.set $page (memory.grow (i32.const 1)))
      (if (i32.eq (local.get $page) (i32.const -1)) (then unreachable))
      (i64.store (i32.shl (local.get $page) (i32.const 16)) (i64.const -1))
      (br $more))
    (i64.const 0))
""")

TRAP = wat("""
  (func (export "process") (param i32 i32) (result i64)
    (i64.extend_i32_u (i32.div_u (i32.const 1) (i32.const 0))))
""")

# Claims 3 GiB of output.
HUGE_OUTPUT = wat("""
  (func (export "process") (param $p i32) (param $n i32) (result i64)
    (call $pack (local.get $p) (i32.const 0xC0000000)))
""")

# Returns exactly as many output lines as records, but one is not JSON.
MALFORMED = wat("""
  (data (i32.const 16) "{\\"ok\\":1}\\n{not json\\n")
  (func (export "process") (param i32 i32) (result i64)
    (call $pack (i32.const 16) (i32.const 19)))
""")

# Returns one line whatever the input.
TOO_FEW = wat("""
  (data (i32.const 16) "{\\"ok\\":1}\\n")
  (func (export "process") (param i32 i32) (result i64)
    (call $pack (i32.const 16) (i32.const 9)))
""")

# Opens a file: no capability grants the file system.
FORBIDDEN_IMPORT = (
    '(module (import "wasi_snapshot_preview1" "path_open"'
    " (func (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))"
    ' (memory (export "memory") 1)'
    ' (func (export "alloc") (param i32) (result i32) (i32.const 16))'
    ' (func (export "process") (param i32 i32) (result i64) (i64.const 0)))'
)

NO_PROCESS = wat("")

WRONG_SIGNATURE = wat('(func (export "process") (param i32) (result i32) (i32.const 0))')

# Declares more initial memory (2048 pages, 128 MiB) than a stage's limit allows.
BIG_INITIAL_MEMORY = wat(ECHO[ECHO.index("(func (export") : -1], memory='(memory (export "memory") 2048)')


def binary(source: str) -> bytes:
    """The module's bytes (what an operator uploads)."""
    return wasmtime.wat2wasm(source)


# Echoes, but traps on a batch whose input holds a '!' anywhere (a poison record).
POISONED = wat("""
  (func (export "process") (param $p i32) (param $n i32) (result i64)
    (local $i i32) (local $skip i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (if (i32.eq (i32.load8_u (i32.add (local.get $p) (local.get $i))) (i32.const 33)) (then unreachable))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (local.set $skip (call $skip_config (local.get $p) (local.get $n)))
    (call $pack (i32.add (local.get $p) (local.get $skip)) (i32.sub (local.get $n) (local.get $skip))))
""")

# Echoes after spinning ~20M loop iterations per batch: slow enough that a run is still going when a test
# uploads the next version.
SLOW_ECHO = wat("""
  (func (export "process") (param $p i32) (param $n i32) (result i64)
    (local $i i32) (local $skip i32)
    (loop $spin
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $spin (i32.lt_u (local.get $i) (i32.const 20000000))))
    (local.set $skip (call $skip_config (local.get $p) (local.get $n)))
    (call $pack (i32.add (local.get $p) (local.get $skip)) (i32.sub (local.get $n) (local.get $skip))))
""")


def on_bang(action: str, *, first: str = "") -> str:
    """Echoes, but runs `action` (WAT instructions) on a batch whose input holds a '!' (a poison record);
    `first` runs before anything else."""
    return wat(f"""
  (func (export "process") (param $p i32) (param $n i32) (result i64)
    (local $i i32) (local $skip i32) (local $page i32)
    {first}
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (if (i32.eq (i32.load8_u (i32.add (local.get $p) (local.get $i))) (i32.const 33)) (then {action}))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (local.set $skip (call $skip_config (local.get $p) (local.get $n)))
    (call $pack (i32.add (local.get $p) (local.get $skip)) (i32.sub (local.get $n) (local.get $skip))))
""")


# A record with '!' makes the module loop forever, grow memory until it cannot and trap, or trap at once.
LOOP_ON_BANG = on_bang("(loop $forever (br $forever))")
BOMB_ON_BANG = on_bang("""
    (loop $more
      (local.set $page (memory.grow (i32.const 1)))
      (if (i32.eq (local.get $page) (i32.const -1)) (then unreachable))
      (i64.store (i32.shl (local.get $page) (i32.const 16)) (i64.const -1))
      (br $more))""")
TRAP_ON_BANG = on_bang("unreachable")

# Takes as much memory as its limit allows, filling every byte of it, then echoes (or traps on a '!' record):
# every batch touches the whole memory limit, so a worker that kept any store would grow by that much.
GREEDY = on_bang(
    "unreachable",
    first="""
    (block $full
      (loop $more
        (local.set $page (memory.grow (i32.const 1)))
        (br_if $full (i32.eq (local.get $page) (i32.const -1)))
        (memory.fill (i32.shl (local.get $page) (i32.const 16)) (i32.const 255) (i32.const 65536))
        (br $more)))""",
)

# Spends ~200 instructions per input byte: a batch fails on fuel only because of all its records together.
COSTLY_PER_BYTE = wat("""
  (func (export "process") (param $p i32) (param $n i32) (result i64)
    (local $i i32) (local $k i32) (local $skip i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $k (i32.const 0))
        (loop $spin
          (local.set $k (i32.add (local.get $k) (i32.const 1)))
          (br_if $spin (i32.lt_u (local.get $k) (i32.const 25))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (local.set $skip (call $skip_config (local.get $p) (local.get $n)))
    (call $pack (i32.add (local.get $p) (local.get $skip)) (i32.sub (local.get $n) (local.get $skip))))
""")


def wasi_module(*, clock: bool = True, random: bool = True, log: bool = True, log_repeat: int = 1) -> str:
    """A module that uses the granted WASI capabilities: for every record it returns
    {"clock":C,"random":R,"log":L}, each 1 when the call worked (a non-zero time, non-zero random bytes, the whole
    message written). It writes "hello from the module" to stderr `log_repeat` times, and traps on a '!' record
    after writing "about to fail"."""
    imports, calls = [], []
    if clock:
        imports.append(
            '(import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))'
        )
        calls.append("""
    (if (i32.and (i32.eqz (call $clock (i32.const 0) (i64.const 1) (i32.const 304)))
                 (i64.ne (i64.load (i32.const 304)) (i64.const 0)))
      (then (i32.store8 (i32.const 209) (i32.const 49))))""")
    if random:
        imports.append('(import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))')
        calls.append("""
    (if (i32.and (i32.eqz (call $random (i32.const 320) (i32.const 16)))
                 (i64.ne (i64.or (i64.load (i32.const 320)) (i64.load (i32.const 328))) (i64.const 0)))
      (then (i32.store8 (i32.const 220) (i32.const 49))))""")
    if log:
        imports.append(
            '(import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))'
        )
        calls.append(f"""
    (i32.store (i32.const 400) (i32.const 100))
    (i32.store (i32.const 404) (i32.const 22))
    (local.set $k (i32.const 0))
    (block $logged
      (loop $again
        (br_if $logged (i32.ge_u (local.get $k) (i32.const {log_repeat})))
        (if (i32.and (i32.eqz (call $fd_write (i32.const 2) (i32.const 400) (i32.const 1) (i32.const 408)))
                     (i32.eq (i32.load (i32.const 408)) (i32.const 22)))
          (then (i32.store8 (i32.const 228) (i32.const 49))))
        (local.set $k (i32.add (local.get $k) (i32.const 1)))
        (br $again)))""")
    trap = "unreachable"
    if log:
        trap = """(i32.store (i32.const 400) (i32.const 130)) (i32.store (i32.const 404) (i32.const 14))
              (drop (call $fd_write (i32.const 1) (i32.const 400) (i32.const 1) (i32.const 408))) unreachable"""
    body = f"""
  (data (i32.const 100) "hello from the module\\n")
  (data (i32.const 130) "about to fail\\n")
  (data (i32.const 200) "{{\\"clock\\":0,\\"random\\":0,\\"log\\":0}}\\n")
  (func (export "process") (param $p i32) (param $n i32) (result i64)
    (local $i i32) (local $k i32) (local $out i32) (local $o i32)
    {"".join(calls)}
    (local.set $i (call $skip_config (local.get $p) (local.get $n)))
    (local.set $out (call $alloc (i32.mul (local.get $n) (i32.const 32))))
    (local.set $o (local.get $out))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (if (i32.eq (i32.load8_u (i32.add (local.get $p) (local.get $i))) (i32.const 33)) (then {trap}))
        (if (i32.eq (i32.load8_u (i32.add (local.get $p) (local.get $i))) (i32.const 10))
          (then
            (memory.copy (local.get $o) (i32.const 200) (i32.const 31))
            (local.set $o (i32.add (local.get $o) (i32.const 31)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (call $pack (local.get $out) (i32.sub (local.get $o) (local.get $out))))
"""
    return f'(module {" ".join(imports)} (memory (export "memory") 1) {ALLOC} {body})'


WASI_ALL = wasi_module()
WASI_CLOCK = wasi_module(random=False, log=False)
WASI_LOUD = wasi_module(clock=False, random=False, log_repeat=5000)
# Imports clock_time_get with the wrong signature.
WASI_BAD_SIGNATURE = (
    '(module (import "wasi_snapshot_preview1" "clock_time_get" (func (param i32) (result i32)))'
    ' (memory (export "memory") 1)'
    ' (func (export "alloc") (param i32) (result i32) (i32.const 16))'
    ' (func (export "process") (param i32 i32) (result i64) (i64.const 0)))'
)

# Reads its environment (capability env) and returns {"env": "A=1;B=two;"} for every record: the variables in
# order, each ended by ';' (where WASI ends them with a NUL).
WASI_ENV = f"""(module
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  {ALLOC}
  (data (i32.const 200) "{{\\"env\\":\\"")
  (data (i32.const 220) "\\"}}\\n")
  (func (export "process") (param $p i32) (param $n i32) (result i64)
    (local $i i32) (local $k i32) (local $size i32) (local $buf i32) (local $out i32) (local $o i32) (local $b i32)
    (if (call $sizes (i32.const 400) (i32.const 404)) (then unreachable))
    (local.set $size (i32.load (i32.const 404)))
    (local.set $buf (call $alloc (i32.add (local.get $size) (i32.const 1))))
    (if (call $environ (call $alloc (i32.add (i32.mul (i32.load (i32.const 400)) (i32.const 4)) (i32.const 4)))
                       (local.get $buf))
      (then unreachable))
    (local.set $out (call $alloc (i32.mul (local.get $n) (i32.add (local.get $size) (i32.const 16)))))
    (local.set $o (local.get $out))
    (local.set $i (call $skip_config (local.get $p) (local.get $n)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (if (i32.eq (i32.load8_u (i32.add (local.get $p) (local.get $i))) (i32.const 10))
          (then
            (memory.copy (local.get $o) (i32.const 200) (i32.const 8))
            (local.set $o (i32.add (local.get $o) (i32.const 8)))
            (local.set $k (i32.const 0))
            (block $copied
              (loop $byte
                (br_if $copied (i32.ge_u (local.get $k) (local.get $size)))
                (local.set $b (i32.load8_u (i32.add (local.get $buf) (local.get $k))))
                (if (i32.eqz (local.get $b)) (then (local.set $b (i32.const 59))))
                (i32.store8 (local.get $o) (local.get $b))
                (local.set $o (i32.add (local.get $o) (i32.const 1)))
                (local.set $k (i32.add (local.get $k) (i32.const 1)))
                (br $byte)))
            (memory.copy (local.get $o) (i32.const 220) (i32.const 3))
            (local.set $o (i32.add (local.get $o) (i32.const 3)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (call $pack (local.get $out) (i32.sub (local.get $o) (local.get $out))))
)"""
