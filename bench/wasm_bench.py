"""WASM stage benchmark: records/s of the same transform as the built-in Python stage and as each example
module, and the per-batch start-up cost of a module (fresh store + instance per batch).

The transform: normalise whitespace and mask e-mail addresses (the `clean` kind with normalize_whitespace
keep_newlines=false + mask_pii email; wasmstages/examples). Records are generated per batch from a seed, the
same for every backend, outside the timed part; the timed part is what a worker spends in the stage's
process() for the batch (for WASM: encoding the batch as JSON lines, the module, parsing its output).
Outputs are hashed and compared across backends. Usage:
    .venv/bin/python bench/wasm_bench.py [--records 1000000] [--batch 1000] [--examples wat assemblyscript zig c]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dataflare_portal.settings")
os.environ.setdefault("DATA_DIR", str(Path(os.environ.get("TMPDIR", "/tmp")) / "dataflare-wasm-bench"))

import django  # noqa: E402

django.setup()

import orjson  # noqa: E402

from pipelines.stagekinds import StageContext, registry  # noqa: E402
from wasmstages import runtime  # noqa: E402
from wasmstages.examples import build  # noqa: E402

PYTHON_STAGE = {
    "text_field": "text",
    "steps": [{"op": "normalize_whitespace", "keep_newlines": False}, {"op": "mask_pii", "types": ["email"]}],
}
WORDS = ["data", "factory", "pipeline", "record", "token", "model", "quality", "数据", "质量", "模型", "batch"]
SPACES = [" ", " ", " ", "  ", "\t", "\n", "\u3000", "\u200b", " \r\n "]


def batches(n: int, size: int):
    """n records of ~150-300 characters: words, odd whitespace, an e-mail address in one record of three."""
    rng = random.Random(11)
    for start in range(0, n, size):
        chunk = []
        for i in range(start, min(n, start + size)):
            parts = []
            for _ in range(rng.randint(20, 45)):
                parts.append(rng.choice(WORDS))
                parts.append(rng.choice(SPACES))
            if i % 3 == 0:
                parts.insert(rng.randrange(len(parts)), f" user{i}.name@mail{i % 97}.example.com ")
            chunk.append({"id": i, "text": "".join(parts), "lang": "en", "score": i % 100 / 100})
        yield chunk


def run_python(n: int, size: int):
    kind = registry.get("clean")
    ctx = StageContext(config=PYTHON_STAGE)
    digest, spent, chars = hashlib.sha256(), 0.0, 0
    for chunk in batches(n, size):
        chars += sum(len(r["text"]) for r in chunk)
        started = time.perf_counter()
        records = kind.process(chunk, ctx).records
        spent += time.perf_counter() - started
        for r in records:
            digest.update(orjson.dumps(r))
    return spent, digest.hexdigest(), chars


def run_wasm(module, n: int, size: int):
    digest, spent = hashlib.sha256(), 0.0
    startups = []
    for chunk in batches(n, size):
        started = time.perf_counter()
        out = runtime.run_batch(module, chunk, label="bench@1", module_config={"field": "text"})
        spent += time.perf_counter() - started
        startups.append(out.startup_seconds)
        for r in out.records:
            digest.update(orjson.dumps(r))
    return spent, digest.hexdigest(), startups


def empty_batch_cost(module, repeat: int = 300) -> float:
    """Wall time of run_batch on a one-record batch: store, instance, alloc, call, read back (median)."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        runtime.run_batch(module, [{"id": 0, "text": "x"}], label="bench@1", module_config={"field": "text"})
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--examples", nargs="+", default=sorted(build.BUILDERS), choices=sorted(build.BUILDERS))
    args = parser.parse_args()
    n, size = args.records, args.batch
    print(f"records: {n}, batch size: {size}, CPU: {os.cpu_count()} cores (shared), one process, one thread")
    print("load average at start (1, 5, 15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    py_s, py_hash, chars = run_python(n, size)
    print(f"average text: {chars / n:.0f} characters")
    print(f"{'backend':<22}{'seconds':>10}{'records/s':>14}{'vs python':>11}  output")
    print(f"{'python (clean kind)':<22}{py_s:>10.2f}{n / py_s:>14,.0f}{1.0:>10.2f}x  reference")
    for name in args.examples:
        t0 = time.perf_counter()
        try:
            content = build.BUILDERS[name]()
        except build.ToolchainMissing as exc:
            print(f"{'wasm ' + name:<22} skipped: {exc}")
            continue
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        module = runtime.compile_module(content)
        compile_ms = (time.perf_counter() - t0) * 1000
        spent, digest, startups = run_wasm(module, n, size)
        same = "identical" if digest == py_hash else "DIFFERENT"
        print(f"{'wasm ' + name:<22}{spent:>10.2f}{n / spent:>14,.0f}{py_s / spent:>10.2f}x  {same}")
        print(
            f"  {len(content)} bytes; build {build_s:.1f} s, compile {compile_ms:.1f} ms (per worker and version); "
            f"start-up per batch (store + instance): median {statistics.median(startups) * 1e6:.0f} µs, "
            f"p95 {sorted(startups)[int(len(startups) * 0.95) - 1] * 1e6:.0f} µs; "
            f"one-record batch end to end: {empty_batch_cost(module) * 1e6:.0f} µs"
        )
    print("load average at end (1, 5, 15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
