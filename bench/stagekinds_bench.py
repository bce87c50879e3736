"""Stage kind benchmark: records/s and peak RSS of filter, clean and dedup (exact, near) over generated records.

Each case runs in a fresh process; records are generated lazily so the input itself holds no
memory, and peak RSS (VmHWM) minus RSS after imports is what the stage costs. Usage:
    .venv/bin/python bench/stagekinds_bench.py [--sizes 100000 1000000] [--kinds filter clean dedup dedup_near]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORDS = [
    "data", "factory", "pipeline", "record", "token", "model", "quality",
    "publish", "stage", "batch", "worker", "数据", "质量", "模型",
]  # fmt: skip
CONFIGS = {
    "filter": {
        "rules": [
            {"type": "length", "min": 20, "max": 2000},
            {"type": "regex", "pattern": "spam", "mode": "exclude"},
            {"type": "language", "allow": ["en", "zh"]},
        ]
    },
    "clean": {
        "steps": [
            {"op": "strip_html"},
            {"op": "normalize_unicode"},
            {"op": "mask_pii"},
            {"op": "normalize_whitespace"},
        ]
    },
    "dedup": {"fields": ["text"]},
    "dedup_near": {"fields": ["text"], "near_duplicate": {"enabled": True, "threshold": 0.8}},
}


def _mb(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _chunks(n: int, size: int = 1000):
    """n records, ~30% exact duplicates, some HTML and PII, generated on the fly."""
    rng = random.Random(7)
    chunk = []
    for i in range(n):
        k = rng.randrange(int(n * 0.7) or 1)
        # Distinct k give distinct word sequences (a base-14 spelling of k), so near-dup only merges true repeats.
        digits = [(k // 14**p) % 14 for p in range(6)]
        text = " ".join(WORDS[(digits[j % 6] + j) % len(WORDS)] for j in range(25)) + f" {WORDS[k % 14]} #{k}"
        if k % 10 == 0:
            text = f"<p>{text}</p> mail u{k}@example.com"
        chunk.append({"id": i, "text": text})
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def child(kind_key: str, n: int) -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dataflare_portal.settings")
    os.environ.setdefault("DATA_DIR", tempfile.mkdtemp(prefix="df-bench-"))
    import django

    django.setup()
    from pipelines.stagekinds import StageContext, registry

    kind = registry.get(kind_key.split("_")[0])
    config = CONFIGS[kind_key]
    kind.validate_config(config)
    workspace = Path(tempfile.mkdtemp(prefix="df-bench-ws-"))
    ctx = StageContext(config=config, stage_key="bench", workspace=workspace)
    base = _mb("VmRSS")
    started = time.perf_counter()
    for _chunk in _chunks(n):
        pass
    generation = time.perf_counter() - started  # subtracted: the figure is the stage's own cost
    started = time.perf_counter()
    out = 0
    if kind.group == "global":
        for result in kind.run_global(_chunks(n), ctx):
            out += len(result.records)
    else:
        for chunk in _chunks(n):
            out += len(kind.process(chunk, ctx).records)
    elapsed = max(1e-9, time.perf_counter() - started - generation)
    print(json.dumps({"records": n, "out": out, "seconds": elapsed, "base_mb": base, "peak_mb": _mb("VmHWM")}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--kinds", nargs="+", default=["filter", "clean", "dedup", "dedup_near"])
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    rows = []
    for n in args.sizes:
        for key in args.kinds:
            proc = subprocess.run(
                [sys.executable, __file__, "--child", key, str(n)], capture_output=True, text=True, check=True
            )
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append((key, n, r["out"], r["records"] / r["seconds"], r["base_mb"], r["peak_mb"]))
    print(f"\nStage kind benchmark (chunks of 1000, python {sys.version.split()[0]})")
    print(
        "{:<11} {:>10} {:>10} {:>11} {:>21} {:>12}".format(
            "kind", "records", "kept", "records/s", "RSS after imports MB", "peak RSS MB"
        )
    )
    for key, n, out, rate, base, peak in rows:
        print(f"{key:<11} {n:>10,} {out:>10,} {rate:>11,.0f} {base:>21.1f} {peak:>12.1f}")


if __name__ == "__main__":
    main()
