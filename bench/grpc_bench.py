"""Calls/s and records/s of the plain client against the reference server at 1, 8, 64 in flight.

Usage: .venv/bin/python bench/grpc_bench.py [--address HOST:PORT] [--model token-counter]
       [--records-per-call 100] [--seconds 5] [--protocol openai [--openai-api completions]]
--protocol openai drives the server's OpenAI-compatible HTTP face (--address is then its base URL).
Without --address a reference server is started as its own process (python -m modelserver) on
a free loopback port, as in production; --in-process shares one process (and GIL) instead.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modelclient import BreakerPolicy, ModelClient, ModelEndpoint  # noqa: E402
from modelclient.channels import ChannelPool  # noqa: E402
from modelclient.openai_http import HttpPool  # noqa: E402
from modelserver.testing import running_server  # noqa: E402

SAMPLE = (
    "The central bank held interest rates steady on Tuesday, and investors in the stock "
    "market welcomed the decision. 研究人员发布了新的人工智能模型。"
)


def run_level(
    client: ModelClient, config: ModelEndpoint, in_flight: int, seconds: float, records: list[str]
) -> dict[str, float]:
    """Drive `in_flight` threads calling back-to-back for `seconds`; return rates."""
    stop = time.perf_counter() + seconds
    latencies: list[float] = []
    lock = threading.Lock()
    errors = 0

    def worker() -> None:
        nonlocal errors
        local: list[float] = []
        bad = 0
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            try:
                client.infer_texts(config, records)
            except Exception:  # noqa: BLE001 - a benchmark counts errors, it does not stop
                bad += 1
                continue
            local.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(local)
            errors += bad

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(in_flight)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    calls = len(latencies)
    ordered = sorted(latencies) or [0.0]
    return {
        "in_flight": in_flight,
        "calls": calls,
        "errors": errors,
        "calls_s": calls / elapsed,
        "records_s": calls * len(records) / elapsed,
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
    }


def bench_subprocess(
    bench: Callable[[str], list[dict[str, float]]], workers: int, http: bool = False
) -> tuple[list[dict[str, float]], str]:
    """Start `python -m modelserver --port 0`, read its address, bench it, stop it."""
    repo = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "modelserver", "--port", "0", "--workers", str(workers)]
    cmd += ["--log-level", "WARNING"] + (["--http-port", "0"] if http else [])
    proc = subprocess.Popen(cmd, cwd=repo, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if http:
            line = proc.stdout.readline()  # type: ignore[union-attr]
        address = line.rsplit(" ", 1)[-1].strip()
        return bench(address), f"reference server process {address}"
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def main() -> int:
    """Parse flags, run the three levels, print a table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", help="host:port of a running KServe V2 server")
    p.add_argument("--model", default="token-counter")
    p.add_argument("--records-per-call", type=int, default=100)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--levels", default="1,8,64")
    p.add_argument("--in-process", action="store_true", help="serve from this process")
    p.add_argument("--protocol", choices=["kserve_v2", "openai"], default="kserve_v2")
    p.add_argument("--openai-api", choices=["chat", "completions"], default="completions")
    args = p.parse_args()
    records = [f"{i}: {SAMPLE}" for i in range(args.records_per_call)]
    levels = [int(x) for x in args.levels.split(",")]

    def bench(address: str) -> list[dict[str, float]]:
        pool, http = ChannelPool(), HttpPool()
        client = ModelClient(channel_pool=pool, http_pool=http)
        # The in-flight bound must not be the bottleneck being measured.
        config = ModelEndpoint(
            address,
            args.model,
            deadline_s=30,
            max_in_flight=max(levels),
            breaker=BreakerPolicy(failure_threshold=1000),
            protocol=args.protocol,
            openai_api=args.openai_api,
        )
        client.infer_texts(config, records)  # warm up the channel
        try:
            return [run_level(client, config, n, args.seconds, records) for n in levels]
        finally:
            pool.close()
            http.close()

    if args.address:
        rows, where = bench(args.address), args.address
    elif args.in_process:
        http_port = 0 if args.protocol == "openai" else None
        with running_server(max_workers=max(64, max(levels)), http_port=http_port) as handle:
            address = handle.http.base_url if handle.http else handle.address
            rows, where = bench(address), f"in-process reference server {address}"
    else:
        rows, where = bench_subprocess(bench, max(64, max(levels)), http=args.protocol == "openai")
    api = f"/{args.openai_api}" if args.protocol == "openai" else ""
    print(
        f"protocol={args.protocol}{api} model={args.model} records/call={args.records_per_call} "
        f"{args.seconds:.0f}s per level; {where}"
    )
    header = f"{'in-flight':>9} {'calls':>7} {'errors':>6} {'calls/s':>9} {'records/s':>10} {'p50 ms':>8} {'p99 ms':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['in_flight']:>9} {r['calls']:>7} {r['errors']:>6} {r['calls_s']:>9.1f} "
            f"{r['records_s']:>10.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
