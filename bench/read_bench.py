"""Read benchmark: records/s and peak RSS reading 100k and 1M-record JSONL/CSV/Parquet files through the file connector.

Each read runs in a fresh process so its peak RSS is its own; "RSS after imports" is the same
process's baseline, so the difference is what reading costs. Usage:
    .venv/bin/python bench/read_bench.py [--sizes 100000 1000000] [--batch-size 1000] [--formats jsonl csv parquet]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
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


def _setup_django(root: Path):
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dataflare_portal.settings")
    os.environ.setdefault("DATA_DIR", tempfile.mkdtemp(prefix="df-bench-"))
    import django

    django.setup()
    from django.conf import settings

    settings.FILE_ROOTS = [root]


def _proc_status_mb(key: str) -> float:
    # VmHWM/VmRSS belong to this process image; ru_maxrss would carry the parent's peak across fork/exec.
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generate(root: Path, n: int, fmt: str) -> Path:
    """Write n records through the connector's own writer (streamed, 10k per chunk)."""
    from catalog.connectors import get_connector_for_kind

    rng = random.Random(n)
    conn = get_connector_for_kind("file", {"root": str(root)})
    location = f"bench-{n}.{fmt}"
    if (root / location).exists():
        return root / location
    writer = conn.open_writer(location, fmt, fields=["id", "text", "score", "lang"])
    chunk = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(30))
        chunk.append({"id": i, "text": text, "score": round(rng.random(), 4), "lang": "en"})
        if len(chunk) == 10_000:
            writer.write(chunk)
            chunk = []
    writer.write(chunk)
    writer.commit()
    return root / location


def child(root: str, location: str, fmt: str, batch_size: int) -> None:
    """Runs in its own process: read the file once, print a JSON line with the figures."""
    _setup_django(Path(root))
    from catalog.connectors import DatasetRef, get_connector_for_kind

    conn = get_connector_for_kind("file", {"root": root})
    base = _proc_status_mb("VmRSS")
    started = time.perf_counter()
    n = 0
    for records, _checkpoint in conn.read(DatasetRef(location, fmt), batch_size=batch_size):
        n += len(records)
    elapsed = time.perf_counter() - started
    peak = _proc_status_mb("VmHWM")
    started = time.perf_counter()
    plain = _plain_read(Path(root) / location, fmt)
    plain_elapsed = time.perf_counter() - started
    assert plain == n
    print(
        json.dumps({"records": n, "seconds": elapsed, "plain_seconds": plain_elapsed, "base_mb": base, "peak_mb": peak})
    )


def _plain_read(path: Path, fmt: str) -> int:
    """The floor: the same parse with no connector (no checkpoints, no chunking)."""
    import csv

    n = 0
    if fmt == "jsonl":
        with path.open("rb") as fh:
            for line in fh:
                json.loads(line)
                n += 1
    elif fmt == "csv":
        with path.open(newline="", encoding="utf-8") as fh:
            for _row in csv.DictReader(fh):
                n += 1
    else:
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=1000):
            n += len(batch.to_pylist())
    return n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--formats", nargs="+", default=["jsonl", "csv", "parquet"])
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--dir", help="where to keep generated files (default: a temp dir, removed after)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        root, location, fmt, batch = args.child
        child(root, location, fmt, int(batch))
        return
    tmp = tempfile.TemporaryDirectory(prefix="df-read-bench-") if not args.dir else None
    root = Path(args.dir or tmp.name).resolve()
    root.mkdir(parents=True, exist_ok=True)
    _setup_django(root)
    rows = []
    for n in args.sizes:
        for fmt in args.formats:
            path = generate(root, n, fmt)
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(root), path.name, fmt, str(args.batch_size)],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            assert r["records"] == n, r
            rate, floor = r["records"] / r["seconds"], r["records"] / r["plain_seconds"]
            rows.append((fmt, n, path.stat().st_size / 2**20, rate, floor, r["base_mb"], r["peak_mb"]))
    print(f"\nFile connector read benchmark (batch_size={args.batch_size}, python {sys.version.split()[0]})")
    header = (
        "format",
        "records",
        "file MB",
        "records/s",
        "plain loop/s",
        "ratio",
        "RSS after imports MB",
        "peak RSS MB",
    )
    print("{:<8} {:>10} {:>9} {:>11} {:>13} {:>6} {:>21} {:>12}".format(*header))
    for fmt, n, size, rate, floor, base, peak in rows:
        ratio = rate / floor
        line = f"{fmt:<8} {n:>10,} {size:>9.1f} {rate:>11,.0f} {floor:>13,.0f} {ratio:>6.2f}"
        print(f"{line} {base:>21.1f} {peak:>12.1f}")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
