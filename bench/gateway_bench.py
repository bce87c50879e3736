"""Gateway overhead: the same OpenAI requests sent to the reference server directly and through the portal's gateway.

Usage: .venv/bin/python bench/gateway_bench.py [--seconds 5] [--levels 1,10,50] [--model annotator]

Starts, on free loopback ports and each in its own process: the reference model server (`python -m modelserver
--http-port`) and the portal under uvicorn (`python -m uvicorn dataflare_portal.asgi:application`, one process;
with `--web-workers N` the image's command, gunicorn with N uvicorn workers) on a fresh SQLite data folder (or
DATABASE_URL when set). Creates a project, two model configs for the server's OpenAI face (`bench-llm`: the
`--model`, `bench-long`: token-counter) and a gateway key, then for each concurrency level runs `clients` asyncio
clients back-to-back for `--seconds`:

- non-streamed chat completions: p50/p95 latency direct and through the gateway, and the difference (the
  overhead a request pays for key check, budget check, routing, metering and the extra hop);
- the portal process's CPU time per non-streamed gateway request (from /proc): unlike latency, it hardly depends
  on what else the machine is running;
- short streams, **request-bound**: streamed chat completions of the same ~100-character answer (asking for the
  usage chunk): completion tokens/s over all clients (the usage chunks' `completion_tokens`) and chunks/s, direct
  and through the gateway. A stream is a dozen chunks over a few milliseconds, so this ratio is decided by the
  per-request cost (the key check, metering, the extra hop, the connection), not by relaying the stream;
- long streams, **relay-bound** (`--long-repeat`, default 80; 0 skips them): the reference server's `token-counter`
  with its `return_tokens` parameter answers with the list of the prompt's tokens, so a long prompt (the sentence
  above repeated) gets a long answer: ~717 chunks, ~5,100 completion tokens a stream at 80 — nothing in the
  server sleeps or exists for the bench. Reported: tokens/s and chunks/s direct and through the gateway and their
  ratios, and the portal's CPU per relayed chunk (relay-bound); the time to each stream's first chunk, direct and
  the gateway's addition at p50/p95 (request-bound: what a streamed call pays before its first token); the
  client's and the model server's CPU per chunk too, and from the three the highest ratio the cores allow, on
  this machine's cores and on three (`stream_bound`: each process on its own core).

Prints the two tables, every failed request by kind (HTTP status and error code, or the exception), and the
machine's `uptime` (the client, the portal and the server share the machine). The stream clients count chunks
in whole network pieces (`bytes.count`), not line by line, so the client's own CPU per chunk stays small.

`--profile FILE` runs the portal under py-spy (`pip install py-spy`; not a project dependency) and writes its
samples in py-spy's raw (collapsed-stack) format, then prints the functions with the most samples (self and
inclusive) so a run says where the portal's time goes; with `--no-streams` only non-streamed calls are sent, so
the profile is the per-request path alone.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPT = "The central bank held interest rates steady on Tuesday, and investors welcomed the decision."
# Long streams: the reference server's `token-counter` with its documented `return_tokens` parameter answers with
# the list of the prompt's tokens, so the answer grows with the prompt (no sleep, no server option that exists for
# the bench). PROMPT repeated 80 times (1,280 prompt tokens) gives an 11.5 kB answer: ~717 chunks of 16
# characters (`_pieces` in modelserver/openai_http.py), ~5,100 completion tokens by the server's tokenizer.
LONG_MODEL = "token-counter"
LONG_PARAMS = {"return_tokens": True}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {timeout}s")


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "nan"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def drive(
    base: str,
    key: str,
    model: str,
    clients: int,
    seconds: float,
    stream: bool,
    *,
    prompt: str = PROMPT,
    body_extra: dict | None = None,
) -> dict:
    """`clients` concurrent loops of chat requests for `seconds`: latencies (ms; a stream's runs to its end),
    streamed chunks and completion tokens (from the usage chunk every stream asks for), each stream's time to its
    first chunk (ms), and errors by kind (HTTP status or exception)."""
    latencies: list[float] = []
    first_chunk: list[float] = []
    chunks = 0
    tokens = 0
    errors: collections.Counter[str] = collections.Counter()
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": stream, **(body_extra or {})}
    if stream:
        body["stream_options"] = {"include_usage": True}
    payload = orjson.dumps(body)
    # aiohttp: a quarter of httpx's client CPU per call (modelclient/gateway_http.py), so the three processes
    # sharing the machine leave more of it to the portal and the server being measured.
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    async with aiohttp.ClientSession(
        base_url=base.rstrip("/") + "/", connector=connector, headers=headers, timeout=aiohttp.ClientTimeout(60)
    ) as client:
        stop = time.perf_counter() + seconds

        async def loop() -> None:
            nonlocal chunks, tokens
            while time.perf_counter() < stop:
                started = time.perf_counter()
                try:
                    async with client.post("chat/completions", data=payload) as response:
                        if response.status != 200:
                            errors[f"HTTP {response.status} {_error_code(await response.read())}"] += 1
                            continue
                        if stream:
                            # Whole network pieces, counted with bytes.count (a line-by-line read costs the
                            # client ~5 us of Python per chunk, which a long stream's thousands of chunks a
                            # second would take from the processes being measured). `carry` holds the end of the
                            # previous piece, too short to hold a whole marker, so one split across two pieces
                            # is counted once.
                            carry, tail, seen, first = b"", b"", 0, 0.0
                            async for piece in response.content.iter_any():
                                window = carry + piece
                                found = window.count(b"data: {")
                                if found and not seen:
                                    first = (time.perf_counter() - started) * 1000.0
                                seen += found
                                carry = window[-6:]
                                tail = (tail + piece)[-8192:]
                            usage_line = [line for line in tail.split(b"\n") if line.startswith(b"data: {")]
                            usage = orjson.loads(usage_line[-1][6:]).get("usage") if usage_line else None
                            if not tail.rstrip().endswith(b"data: [DONE]"):
                                errors["stream ended without [DONE]"] += 1
                                continue
                            chunks += seen
                            first_chunk.append(first)
                            if isinstance(usage, dict):
                                tokens += int(usage.get("completion_tokens") or 0)
                        else:
                            await response.read()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
                    continue
                latencies.append((time.perf_counter() - started) * 1000.0)

        began = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(clients)))
        wall = time.perf_counter() - began
    return {
        "latencies": latencies,
        "first": first_chunk,
        "chunks": chunks,
        "tokens": tokens,
        "errors": errors,
        "wall": wall,
    }


def _error_code(raw: bytes) -> str:
    """The `error.code` of an OpenAI-shaped error body (or the body's start)."""
    try:
        return str(orjson.loads(raw)["error"]["code"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return raw[:60].decode(errors="replace")


CORES = os.cpu_count() or 1


def stream_bound(direct_us: tuple[float, ...], gateway_us: tuple[float, ...], cores: int) -> float:
    """The highest gateway/direct chunk-rate ratio the CPU allows, from each process's CPU per chunk.

    Every chunk costs the client and the model server (direct: `direct_us`) and through the gateway the portal
    too (`gateway_us`) some CPU. A rate is bounded by the busiest process (one core each at most) and by all of
    them sharing `cores`: rate <= min(1 / max(cpu), cores / sum(cpu)). At one client, where nothing queues but
    the processes themselves, a measured ratio at this bound means the cores decide it, not the relay's latency.
    """

    def rate(cpu: tuple[float, ...]) -> float:
        return min(1 / max(cpu), cores / sum(cpu))

    return rate(gateway_us) / rate(direct_us)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its descendants alive now (gunicorn's workers; Linux /proc)."""
    total = 0.0
    todo = [pid]
    while todo:
        one = todo.pop()
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        for task in Path(f"/proc/{one}/task").glob("*/children"):
            todo.extend(int(c) for c in task.read_text().split())
    return total


def setup_portal(data_dir: Path, server_url: str) -> str:
    """Migrate, then create the project, the model config and a key; returns the key text."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dataflare_portal.settings")
    import logging

    import django

    django.setup()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from catalog.models import Project
    from gateway import services
    from pipelines.models import ModelConfig

    project, _ = Project.objects.get_or_create(slug="bench", defaults={"name": "Bench"})
    for name, model in (("bench-llm", "annotator"), ("bench-long", LONG_MODEL)):
        ModelConfig.objects.update_or_create(
            name=name,
            defaults={
                "protocol": "openai",
                "openai_api": "chat",
                "endpoint": server_url,
                "model_name": model,
                "deadline_ms": 30_000,
                "max_in_flight": 64,
            },
        )
    _key, text = services.key_create(actor=None, project=project, name=f"bench-{int(time.time())}")
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--levels", default="1,10,50")
    p.add_argument("--model", default="annotator", help="the server's model (the gateway name is bench-llm)")
    p.add_argument(
        "--long-repeat",
        type=int,
        default=80,
        help="long streams: the prompt repeated this many times for token-counter (80: ~717 chunks a stream; 0: skip)",
    )
    p.add_argument(
        "--no-streams", action="store_true", help="non-streamed calls only (to profile the per-request path alone)"
    )
    p.add_argument("--profile", default="", help="record the portal with py-spy into this file (collapsed stacks)")
    p.add_argument(
        "--web-workers",
        type=int,
        default=1,
        help="1: one `python -m uvicorn` process (as the tests run it); N > 1: the image's command, gunicorn with "
        "N uvicorn workers (the deployed default is WEB_CONCURRENCY=3)",
    )
    args = p.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    if args.no_streams:
        args.long_repeat = 0

    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    from cryptography.fernet import Fernet

    # Production settings (DEBUG off: no query log), plain HTTP on loopback.
    env = {
        **os.environ,
        "DATA_DIR": str(tmp),
        "DEBUG": "false",
        "SECRET_KEY": "bench-" + "x" * 50,
        "SECRETS_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "SECURE_SSL_REDIRECT": "false",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
    }
    os.environ.update(
        {k: env[k] for k in ("DATA_DIR", "DEBUG", "SECRET_KEY", "SECRETS_ENCRYPTION_KEYS", "SECURE_SSL_REDIRECT")}
    )
    os.environ.update({"ALLOWED_HOSTS": env["ALLOWED_HOSTS"]})
    grpc_port, http_port, portal_port = free_port(), free_port(), free_port()
    procs = []
    try:
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "modelserver", "--port", str(grpc_port), "--http-port", str(http_port)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        direct = f"http://127.0.0.1:{http_port}/v1"
        wait_http(f"{direct}/models")
        key = setup_portal(tmp, direct)
        profiler = (
            [
                shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy")),
                "record",
                "--format",
                "raw",
                "-r",
                "200",
                "-o",
            ]
            + [args.profile, "--"]
            if args.profile
            else []
        )
        if args.web_workers > 1:
            # The image's CMD (Dockerfile), on loopback and without the access log.
            server = [
                str(Path(sys.executable).with_name("gunicorn")),
                "dataflare_portal.asgi:application",
                "-k",
                "uvicorn_worker.UvicornWorker",
                "--bind",
                f"127.0.0.1:{portal_port}",
                "--workers",
                str(args.web_workers),
                "--timeout",
                "60",
            ]
            profiler = [*profiler[:2], "--subprocesses", *profiler[2:]] if profiler else []
        else:
            server = [
                sys.executable,
                "-m",
                "uvicorn",
                "dataflare_portal.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(portal_port),
                "--log-level",
                "warning",
                "--no-access-log",
            ]
        procs.append(
            subprocess.Popen(
                [*profiler, *server],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=open(tmp / "portal.log", "wb"),  # noqa: SIM115 - closed with the process
            )
        )
        portal_pid = procs[-1].pid  # with --profile, py-spy's: its CPU column then means little
        gateway = f"http://127.0.0.1:{portal_port}/v1"
        wait_http(f"http://127.0.0.1:{portal_port}/healthz")
        # Warm both paths (connections, caches, the first metering write; every worker with several).
        asyncio.run(drive(direct, "unused", args.model, 2, 1.0, False))
        asyncio.run(drive(gateway, key, "bench-llm", 2 * args.web_workers, 1.0, False))
        rows = []
        long_prompt = " ".join([PROMPT] * args.long_repeat)
        for clients in levels:
            d = asyncio.run(drive(direct, "unused", args.model, clients, args.seconds, False))
            cpu = cpu_seconds(portal_pid)
            g = asyncio.run(drive(gateway, key, "bench-llm", clients, args.seconds, False))
            g["cpu_ms"] = (
                (cpu_seconds(portal_pid) - cpu) * 1000.0 / max(1, len(g["latencies"]) + sum(g["errors"].values()))
            )
            if args.no_streams:
                ds = gs = {"latencies": [], "first": [], "chunks": 0, "tokens": 0, "errors": collections.Counter()}
                ds["wall"] = gs["wall"] = 1.0
            else:
                ds = asyncio.run(drive(direct, "unused", args.model, clients, args.seconds, True))
                gs = asyncio.run(drive(gateway, key, "bench-llm", clients, args.seconds, True))
            dl = gl = None
            if args.long_repeat:
                long = {"prompt": long_prompt, "body_extra": LONG_PARAMS}
                server_pid = procs[0].pid
                for name, base, run_key, model in (
                    ("dl", direct, "unused", LONG_MODEL),
                    ("gl", gateway, key, "bench-long"),
                ):
                    # The CPU each of the three processes spends per chunk: what a stream's rate is bound by
                    # when they outnumber the cores (see `stream_bound`).
                    before = (time.process_time(), cpu_seconds(server_pid), cpu_seconds(portal_pid))
                    run = asyncio.run(drive(base, run_key, model, clients, args.seconds, True, **long))
                    after = (time.process_time(), cpu_seconds(server_pid), cpu_seconds(portal_pid))
                    per_chunk = [(b - a) * 1e6 / max(1, run["chunks"]) for a, b in zip(before, after, strict=True)]
                    run["client_us"], run["server_us"], run["cpu_us"] = per_chunk
                    if name == "dl":
                        dl = run
                    else:
                        gl = run
            rows.append((clients, d, g, ds, gs, dl, gl))
        served = f"gunicorn, {args.web_workers} uvicorn workers" if args.web_workers > 1 else "1 uvicorn process"
        database = "PostgreSQL" if os.environ.get("DATABASE_URL") else "SQLite"
        print(f"gateway bench: {args.seconds:g}s per run, model {args.model}, portal = {served}, {database}")
        print(
            "Short streams (request-bound: a ~100-character answer, a dozen chunks, so tokens/s measures the "
            "per-request cost)"
        )
        print(
            "| clients | direct p50 ms | gateway p50 ms | added p50 ms | direct p95 ms | gateway p95 ms | "
            "added p95 ms | direct req/s | gateway req/s | portal CPU ms/req | direct streamed tokens/s | "
            "gateway streamed tokens/s | token ratio | direct / gateway chunks/s | errors |"
        )
        print("|" + "---|" * 15)
        kinds = []
        for clients, d, g, ds, gs, dl, gl in rows:
            d50, g50 = statistics.median(d["latencies"] or [0]), statistics.median(g["latencies"] or [0])
            d95, g95 = pct(d["latencies"], 0.95), pct(g["latencies"], 0.95)
            dcs, gcs = ds["chunks"] / ds["wall"], gs["chunks"] / gs["wall"]
            dts, gts = ds["tokens"] / ds["wall"], gs["tokens"] / gs["wall"]
            errors = 0
            runs = (("direct", d), ("gateway", g), ("direct stream", ds), ("gateway stream", gs))
            for name, run in runs + ((("direct long stream", dl), ("gateway long stream", gl)) if dl else ()):
                errors += sum(run["errors"].values())
                kinds += [f"{clients} clients, {name}: {n} x {kind}" for kind, n in run["errors"].most_common()]
            print(
                f"| {clients} | {d50:.1f} | {g50:.1f} | {g50 - d50:+.1f} | {d95:.1f} | {g95:.1f} | {g95 - d95:+.1f} | "
                f"{len(d['latencies']) / d['wall']:.0f} | {len(g['latencies']) / g['wall']:.0f} | {g['cpu_ms']:.2f} | "
                f"{dts:.0f} | {gts:.0f} | {ratio(gts, dts)} | {dcs:.0f} / {gcs:.0f} | {errors} |"
            )
        if args.long_repeat:
            per_stream = rows[0][5]["chunks"] / max(1, len(rows[0][5]["latencies"]))
            print(
                f"Long streams (relay-bound: {LONG_MODEL} with return_tokens, the prompt x{args.long_repeat}, "
                f"~{per_stream:.0f} chunks a stream; tokens/s, chunks/s and portal CPU per chunk measure the relay, "
                "time to first chunk the per-request cost)"
            )
            print(
                "| clients | direct tokens/s | gateway tokens/s | token ratio | direct chunks/s | gateway chunks/s | "
                "chunk ratio | direct first chunk p50 / p95 ms | added first chunk p50 / p95 ms | "
                "portal CPU us/chunk | client / server CPU us/chunk (direct; gateway) | "
                f"ratio bound on {CORES} cores / on 3 | errors |"
            )
            print("|" + "---|" * 13)
            for clients, _d, _g, _ds, _gs, dl, gl in rows:
                dts, gts = dl["tokens"] / dl["wall"], gl["tokens"] / gl["wall"]
                dcs, gcs = dl["chunks"] / dl["wall"], gl["chunks"] / gl["wall"]
                f50, f95 = statistics.median(dl["first"] or [0]), pct(dl["first"], 0.95)
                a50 = statistics.median(gl["first"] or [0]) - f50
                a95 = pct(gl["first"], 0.95) - f95
                errors = sum(dl["errors"].values()) + sum(gl["errors"].values())
                c, sv, p = gl["client_us"], gl["server_us"], gl["cpu_us"]
                used = ((dl["client_us"], dl["server_us"]), (c, sv, p))
                bound_here, bound_3 = stream_bound(*used, CORES), stream_bound(*used, 3)
                print(
                    f"| {clients} | {dts:.0f} | {gts:.0f} | {ratio(gts, dts)} | {dcs:.0f} | {gcs:.0f} | "
                    f"{ratio(gcs, dcs)} | {f50:.1f} / {f95:.1f} | {a50:+.1f} / {a95:+.1f} | {gl['cpu_us']:.1f} | "
                    f"{dl['client_us']:.1f} / {dl['server_us']:.1f}; {c:.1f} / {sv:.1f} | "
                    f"{bound_here:.2f} / {bound_3:.2f} | {errors} |"
                )
        for line in kinds:
            print("error:", line)
        print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    finally:
        for proc in procs:
            # py-spy writes its file when interrupted (and stops the portal it started).
            proc.send_signal(signal.SIGINT) if args.profile and proc is procs[-1] else proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
    if args.profile:
        summarise_profile(Path(args.profile))


def summarise_profile(path: Path, top: int = 25) -> None:
    """The functions with the most py-spy samples in a collapsed-stack file: inclusive and self time."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _sep, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n
    if not total:
        print("profile: no samples")
        return
    for title, table in (("inclusive", inclusive), ("self", own)):
        print(f"profile ({title}, {total} samples):")
        for frame, n in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            print(f"  {100 * n / total:5.1f}%  {frame[:150]}")


if __name__ == "__main__":
    main()
