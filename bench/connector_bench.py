"""Connector benchmark: S3 read and publish throughput next to local files, 1M records by default.

The S3 side is moto's standalone server (`moto[server]`, a real HTTP server on a free loopback port,
started here); the file side is the file connector in a temp root. Each measurement runs in a fresh
process so its peak RSS is its own. Publish is the sink writer exactly as a publish drives it (write in
chunks, finish, commit: a multipart upload for S3, a temp file and rename for files); read is the
connector's streamed read in chunks of --batch-size. Prints records/s, MB/s and peak RSS, with the load.

    .venv/bin/python bench/connector_bench.py [--records 1000000] [--batch-size 5000] [--formats jsonl parquet]

moto keeps objects in its own memory, so S3 figures here measure the client path (signing, HTTP,
parts, ranged GETs) over loopback against a Python server, not a production object store.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORDS = ["data", "factory", "pipeline", "record", "token", "model", "quality", "publish", "数据", "质量", "模型"]
SECRET = {"access_key_id": "AKIABENCH0000000001", "secret_access_key": "bench-secret"}


def _setup_django(root: Path):
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dataflare_portal.settings")
    os.environ.setdefault("DATA_DIR", tempfile.mkdtemp(prefix="df-bench-"))
    import django

    django.setup()
    from django.conf import settings

    settings.FILE_ROOTS = [root]


def _peak_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _records(n: int, start: int, count: int) -> list[dict]:
    rng = random.Random(start)
    return [
        {"id": i, "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 25))), "score": rng.random()}
        for i in range(start, min(n, start + count))
    ]


def _connector(kind: str, root: Path, endpoint: str, bucket: str):
    from catalog.connectors import get_connector_for_kind

    if kind == "file":
        return get_connector_for_kind("file", {"root": str(root)})
    return get_connector_for_kind("s3", {"endpoint": endpoint, "bucket": bucket, "part_size_mb": 16}, SECRET)


def child(args) -> None:
    """One measurement in this fresh process; prints a JSON line."""
    root = Path(args.root)
    _setup_django(root)
    from catalog.connectors import DatasetRef

    conn = _connector(args.kind, root, args.endpoint, args.bucket)
    location = f"bench/out-{args.records}.{args.format}"
    started = time.perf_counter()
    if args.op == "publish":
        # Only the connector's time counts: generating the records is not publishing them.
        spent = 0.0
        t = time.perf_counter()
        w = conn.open_writer(location, args.format, fields=["id", "text", "score"])
        spent += time.perf_counter() - t
        for i in range(0, args.records, args.batch_size):
            chunk = _records(args.records, i, args.batch_size)
            t = time.perf_counter()
            w.write(chunk)
            spent += time.perf_counter() - t
        t = time.perf_counter()
        result = w.commit()
        spent += time.perf_counter() - t
        started = time.perf_counter() - spent
        n, size = result["records"], result["size_bytes"]
    else:
        n = 0
        for records, _checkpoint in conn.read(DatasetRef(location, args.format), batch_size=args.batch_size):
            n += len(records)
        size = (root / location).stat().st_size if args.kind == "file" else None
        if size is None:
            head = conn.client().head_object(Bucket=args.bucket, Key=conn.key(location))
            size = head["ContentLength"]
    seconds = time.perf_counter() - started
    print(json.dumps({"records": n, "bytes": size, "seconds": seconds, "peak_mb": _peak_mb()}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--formats", nargs="+", default=["jsonl", "parquet"])
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--kind")
    parser.add_argument("--op")
    parser.add_argument("--format")
    parser.add_argument("--root")
    parser.add_argument("--endpoint")
    parser.add_argument("--bucket")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.25)
        import boto3

        bucket = "bench"
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=SECRET["access_key_id"],
            aws_secret_access_key=SECRET["secret_access_key"],
        ).create_bucket(Bucket=bucket)
        root = Path(tempfile.mkdtemp(prefix="df-connbench-"))
        print(f"load average before: {os.getloadavg()}; cores: {os.cpu_count()}; records: {args.records}")
        print(f"{'format':8} {'kind':5} {'op':8} {'records/s':>12} {'MB/s':>8} {'MB':>8} {'peak RSS MB':>12}")
        for fmt in args.formats:
            for op in ("publish", "read"):
                for kind in ("file", "s3"):
                    cmd = [sys.executable, __file__, "--child", "--kind", kind, "--op", op, "--format", fmt,
                           "--root", str(root), "--endpoint", endpoint, "--bucket", bucket,
                           "--records", str(args.records), "--batch-size", str(args.batch_size)]  # fmt: skip
                    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
                    if out.returncode != 0:
                        print(f"{fmt:8} {kind:5} {op:8} FAILED: {out.stderr.strip().splitlines()[-1:]}")
                        continue
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    mb = r["bytes"] / 1e6
                    print(
                        f"{fmt:8} {kind:5} {op:8} {r['records'] / r['seconds']:12,.0f} {mb / r['seconds']:8.1f}"
                        f" {mb:8.1f} {r['peak_mb']:12.0f}"
                    )
        print(f"load average after: {os.getloadavg()}")
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
