"""The sandbox: well-behaved modules run; hostile ones fail their batch with a clear error naming module@version."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import orjson
import pytest

from wasmstages import runtime
from wasmstages.abi import AbiError, abi_check

from . import modules

RECORDS = [{"id": i, "text": f"record {i} \u4e2d\u6587"} for i in range(5)]


def _module(source: str):
    return runtime.compile_module(modules.binary(source))


def _run(source: str, records=RECORDS, **limits):
    return runtime.run_batch(_module(source), records, label="hostile@7", limits=limits or None)


def test_it_passes_records_through_an_echo_module_unchanged():
    out = _run(modules.ECHO)
    assert out.records == RECORDS
    assert out.filtered == 0 and out.quarantined == []
    assert out.fuel_used > 0


def test_it_counts_filtered_and_quarantined_lines_with_their_reasons():
    out = _run(modules.VERDICTS)
    assert out.records == []
    assert out.filtered == 3
    assert out.quarantined == [(1, "odd", "looks wrong"), (3, "odd", "looks wrong")]


def test_the_module_sees_its_config_on_the_first_line():
    payload = runtime.encode_input(RECORDS[:2], {"field": "text"})
    lines = payload.split(b"\n")
    assert orjson.loads(lines[0]) == {"field": "text"}
    assert [orjson.loads(x) for x in lines[1:3]] == RECORDS[:2]
    assert lines[3] == b""


def test_an_infinite_loop_runs_out_of_fuel():
    started = time.monotonic()
    with pytest.raises(runtime.WasmStageError) as err:
        _run(modules.INFINITE_LOOP, fuel=20_000_000)
    assert "hostile@7" in str(err.value) and "fuel" in str(err.value)
    assert time.monotonic() - started < 10


def test_an_infinite_loop_is_stopped_by_wall_time_when_fuel_would_last():
    started = time.monotonic()
    with pytest.raises(runtime.WasmStageError) as err:
        _run(modules.INFINITE_LOOP, fuel=runtime.MAX_LIMITS["fuel"], wall_seconds=0.3)
    elapsed = time.monotonic() - started
    assert "hostile@7" in str(err.value) and "wall_seconds" in str(err.value)
    assert 0.25 <= elapsed < 5


def test_a_memory_bomb_stops_at_its_page_limit():
    with pytest.raises(runtime.WasmStageError) as err:
        _run(modules.MEMORY_BOMB, memory_pages=64)
    assert "hostile@7" in str(err.value) and "memory_pages" in str(err.value) and "64" in str(err.value)


def test_a_module_whose_initial_memory_exceeds_the_limit_fails_at_start():
    with pytest.raises(runtime.WasmStageError) as err:
        _run(modules.BIG_INITIAL_MEMORY, memory_pages=1024)
    assert "hostile@7" in str(err.value) and "memory_pages" in str(err.value)


def test_input_larger_than_the_memory_limit_is_refused_by_alloc():
    big = [{"id": 1, "text": "x" * 200_000}]
    with pytest.raises(runtime.WasmStageError) as err:
        _run(modules.ECHO, big, memory_pages=2)
    assert "could not allocate" in str(err.value)


def test_a_trap_names_the_module_and_the_trap():
    with pytest.raises(runtime.WasmStageError) as err:
        _run(modules.TRAP)
    assert "hostile@7" in str(err.value) and "trapped" in str(err.value)
    assert "divi" in str(err.value).lower()


def test_huge_output_is_refused_before_it_is_read():
    with pytest.raises(runtime.WasmStageError) as err:
        _run(modules.HUGE_OUTPUT, memory_pages=16)
    assert "hostile@7" in str(err.value) and "output_bytes" in str(err.value)


def test_output_over_a_small_limit_is_refused():
    with pytest.raises(runtime.WasmStageError) as err:
        _run(modules.ECHO, output_bytes=10)
    assert "output_bytes" in str(err.value)


def test_malformed_output_names_the_record():
    records = [{"id": "a-1", "text": "x"}, {"id": "b-2", "text": "y"}]
    with pytest.raises(runtime.WasmStageError) as err:
        _run(modules.MALFORMED, records)
    assert "hostile@7" in str(err.value) and "record 1 (id b-2)" in str(err.value)


def test_too_few_output_lines_fail_the_batch():
    with pytest.raises(runtime.WasmStageError) as err:
        _run(modules.TOO_FEW)
    assert "1 output lines for 5 input records" in str(err.value)


def test_a_failed_batch_leaves_the_next_batch_of_the_same_module_alone():
    module = _module(modules.ECHO)
    with pytest.raises(runtime.WasmStageError):
        runtime.run_batch(module, RECORDS, label="echo@1", limits={"output_bytes": 10})
    assert runtime.run_batch(module, RECORDS, label="echo@1").records == RECORDS


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (modules.FORBIDDEN_IMPORT, "wasi_snapshot_preview1.path_open"),
        (modules.NO_PROCESS, "process(i32, i32) -> i64"),
        (modules.WRONG_SIGNATURE, "process(i32) -> i32"),
        ('(module (func (export "alloc") (param i32) (result i32) (i32.const 0)))', "`memory`"),
    ],
)
def test_modules_off_the_abi_are_refused_with_what_to_change(source, expected):
    with pytest.raises(AbiError) as err:
        abi_check(runtime.compile_module(modules.binary(source)))
    assert expected in str(err.value)


def test_compiled_modules_are_cached_by_digest_and_a_new_digest_compiles_anew():
    import hashlib

    runtime.cache_clear()
    loads = []
    echo, verdicts = modules.binary(modules.ECHO), modules.binary(modules.VERDICTS)

    def loader(content):
        return lambda: loads.append(1) or content

    a = runtime.module_for(hashlib.sha256(echo).hexdigest(), loader(echo))
    b = runtime.module_for(hashlib.sha256(echo).hexdigest(), loader(echo))
    c = runtime.module_for(hashlib.sha256(verdicts).hexdigest(), loader(verdicts))
    assert a is b and c is not a and len(loads) == 2
    with pytest.raises(runtime.WasmStageError, match="does not match"):
        runtime.module_for("0" * 64, loader(echo))


def test_the_worker_memory_stays_bounded_under_repeated_memory_bombs():
    """Twenty bombs with a 32 MiB limit, each touching every page it gets: the process's peak RSS grows by about
    one bomb's worth, not twenty (each batch's store is freed), and far below what an unbounded bomb would take."""
    root = Path(__file__).resolve().parents[2]
    script = textwrap.dedent(
        """
        import django, os, sys
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dataflare_portal.settings")
        django.setup()
        from wasmstages import runtime
        from wasmstages.tests import modules

        def hwm():
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
        module = runtime.compile_module(modules.binary(modules.MEMORY_BOMB))
        echo = runtime.compile_module(modules.binary(modules.ECHO))
        runtime.run_batch(echo, [{"a": 1}], label="warm@1")
        before = hwm()
        failures = 0
        for _ in range(20):
            try:
                runtime.run_batch(module, [{"a": 1}], label="bomb@1", limits={"memory_pages": 512})
            except runtime.WasmStageError:
                failures += 1
        print(failures, before, hwm())
        """
    )
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    failures, before, after = map(int, done.stdout.split()[-3:])
    assert failures == 20
    # One bomb touches 32 MiB; twenty unfreed would be 640 MiB.
    assert after - before < 96, (before, after)


# ---- the record that makes a batch fail --------------------------------------------------------
def _poisoned_batch(n: int = 40, bad: int = 13) -> list[dict]:
    records = [{"id": f"r-{i}", "text": f"plain record {i}"} for i in range(n)]
    records[bad] = {
        "id": f"r-{bad}",
        "text": "boom! token=abcd1234efgh5678 write to jane.doe@example.com",
        "password": "hunter2-very-secret",
        "nested": {"api_key": "sk-live-0123456789"},
    }
    return records


def _assert_names_the_record(error: runtime.WasmStageError, bad: int = 13) -> None:
    text = str(error)
    assert "hostile@7" in text
    assert f"record {bad} (id r-{bad})" in text and "boom!" in text
    assert error.record_index == bad
    for secret in ("hunter2-very-secret", "sk-live-0123456789", "abcd1234efgh5678", "jane.doe@example.com"):
        assert secret not in text
    assert "\n" not in text  # the engine keeps a failed batch's first line as the run's reason


@pytest.mark.parametrize(
    ("source", "limits", "cause"),
    [
        (modules.LOOP_ON_BANG, {"fuel": 50_000_000}, "fuel"),
        (modules.LOOP_ON_BANG, {"fuel": runtime.MAX_LIMITS["fuel"], "wall_seconds": 0.5}, "wall_seconds"),
        (modules.BOMB_ON_BANG, {"memory_pages": 64}, "memory_pages"),
        (modules.TRAP_ON_BANG, {}, "unreachable"),
    ],
    ids=["loop-fuel", "loop-wall-time", "memory-bomb", "trap"],
)
def test_a_failure_inside_the_module_names_the_record_that_causes_it(source, limits, cause):
    with pytest.raises(runtime.WasmStageError) as err:
        _run(source, _poisoned_batch(), **limits)
    assert cause in str(err.value)
    _assert_names_the_record(err.value)


@pytest.mark.parametrize("bad", [0, 1, 38, 39])
def test_the_search_finds_a_poison_record_at_either_end_of_the_batch(bad):
    with pytest.raises(runtime.WasmStageError) as err:
        _run(modules.TRAP_ON_BANG, _poisoned_batch(bad=bad))
    _assert_names_the_record(err.value, bad)


def test_a_one_record_batch_names_its_record():
    with pytest.raises(runtime.WasmStageError) as err:
        _run(modules.BOMB_ON_BANG, _poisoned_batch(n=1, bad=0), memory_pages=32)
    _assert_names_the_record(err.value, 0)


def test_a_module_that_fails_without_records_blames_none():
    with pytest.raises(runtime.WasmStageError) as err:
        _run(modules.TRAP, _poisoned_batch())
    assert "empty batch" in str(err.value) and err.value.record_index is None


def test_records_that_fail_only_together_are_not_blamed_on_one():
    records = [{"id": i, "text": "x" * 200} for i in range(40)]
    with pytest.raises(runtime.WasmStageError) as err:
        _run(modules.COSTLY_PER_BYTE, records, fuel=1_400_000)
    assert "No single record fails on its own" in str(err.value) and err.value.record_index is None
    # each half passes, so the search stopped after the empty batch and the two halves
    payload = [orjson.dumps(r) for r in records]
    found = runtime.isolate_record(
        _module(modules.COSTLY_PER_BYTE), b"{}", payload, runtime.limits_of({"fuel": 1_400_000}), wasi=False
    )
    assert (found.verdict, found.probes) == ("together", 3)


@pytest.mark.parametrize("n", [2, 7, 64, 1000])
def test_the_search_is_bounded_by_twice_the_depth_of_the_batch(n):
    import math

    records = [{"id": i, "text": "ok"} for i in range(n)]
    records[n - 1]["text"] = "bad!"
    lines = [orjson.dumps(r) for r in records]
    found = runtime.isolate_record(_module(modules.TRAP_ON_BANG), b"{}", lines, runtime.limits_of(None), wasi=False)
    assert (found.verdict, found.index) == ("record", n - 1)
    assert found.probes <= 2 * math.ceil(math.log2(n)) + 2


def test_probe_limits_shrink_with_depth_but_never_exceed_the_stage_limits():
    lim = runtime.limits_of({"fuel": 8_000_000_000, "wall_seconds": 8})
    assert runtime._probe_limits(lim, 0) == lim
    assert runtime._probe_limits(lim, 3)["fuel"] == 1_000_000_000
    assert runtime._probe_limits(lim, 3)["wall_seconds"] == 1
    assert runtime._probe_limits(lim, 40)["fuel"] == runtime.PROBE_FUEL_FLOOR
    small = runtime.limits_of({"fuel": 5000, "wall_seconds": 0.05})
    assert runtime._probe_limits(small, 5)["fuel"] == 5000 and runtime._probe_limits(small, 5)["wall_seconds"] == 0.05
    assert runtime._probe_limits(lim, 2)["memory_pages"] == lim["memory_pages"]


def test_the_search_can_be_switched_off():
    with pytest.raises(runtime.WasmStageError) as err:
        runtime.run_batch(_module(modules.TRAP_ON_BANG), _poisoned_batch(), label="hostile@7", isolate=False)
    assert err.value.record_index is None and "record 13" not in str(err.value)


def test_an_excerpt_is_short_and_masks_secrets_and_personal_data():
    record = {"id": 1, "text": "x" * 5000, "secret_token": "s3cr3t-value", "contact": "bob@example.org"}
    text = runtime.record_excerpt(record)
    assert len(text) <= runtime.EXCERPT_CHARS
    assert "s3cr3t" not in text and "bob@example.org" not in text
    long_key = {"text": "Authorization: Bearer abcdefghijklmnop0123456789 " + "y" * 300}
    assert "abcdefghijklmnop" not in runtime.record_excerpt(long_key)
