"""Metrics benchmark: a year of raw events, the rollup rebuild, fresh-minute rollups, API and dashboard load.

Usage:
    .venv/bin/python bench/metrics_bench.py                      # 10M token events (full size)
    .venv/bin/python bench/metrics_bench.py --events 200000 --duration 10   # quick check
    .venv/bin/python bench/metrics_bench.py --skip-generate      # reuse the loaded year
    .venv/bin/python bench/metrics_bench.py --backend sqlite --events 1000000   # the embedded default

Runs against its own PostgreSQL database (BENCH_DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/df_bench; dropped and re-created unless --skip-generate),
never a test database; with `--backend sqlite`, against the embedded default (SQLite, no Redis:
the portal's own file cache) in its own data folder (BENCH_DATA_DIR, default
/tmp/df-metrics-bench-sqlite; emptied unless --skip-generate). Steps:
1. generate one year of raw events (3 projects, 20 pipelines, 6 stage templates, 5 model
   versions): `--events` token-usage events and a quarter as many batch events, streamed with
   COPY (SQLite: batched INSERTs in one transaction);
2. rebuild every rollup of the year (`metrics_rollup_rebuild`), then one rollup pass;
3. COPY one minute of fresh events at 5,000 events/s (300,000) and time one rollup pass; then the
   steady state of that rate: four passes `ROLLUP_INTERVAL` s apart, each after that interval's
   events (played a day back, then the watermark is put back to now);
4. start gunicorn on 127.0.0.1 (a free port; threads, or with `--server asgi` uvicorn workers as the
   image does) and drive every metrics endpoint, every CSV export, the dashboard page and its
   refresh JSON with `--clients` concurrent keep-alive clients
   (separate processes) for `--duration` s each, twice: cold (every request a new filter
   combination, so the cache never answers) and warm (a few URLs the cache holds);
5. EXPLAIN (ANALYZE, BUFFERS) the rollup queries of one cold request per endpoint (PostgreSQL).
Prints one table: p50/p95/p99 latency and requests/s per scenario, the rollup timings and the
plans of the slowest queries.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import multiprocessing as mp
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

PROJECTS = 3
PIPELINES = 20
STAGES = ["read", "filter", "clean", "dedup", "model_inference", "qc"]
MODEL_VERSIONS = ["v1.0", "v1.1", "v2.0", "v2.1", "v3.0"]
STATUSES = ["OK"] * 190 + ["UNAVAILABLE"] * 6 + ["DEADLINE_EXCEEDED"] * 3 + ["RESOURCE_EXHAUSTED"]
LAT_BOUNDS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
TOKEN_COLUMNS = (
    "ts, project_id, pipeline_id, stage_template, model_name, model_version, status_code, requests, records, "
    "prompt_tokens, completion_tokens, latency_ms_sum, latency_ms_max, "
    + ", ".join(f"lat_le_{b}" for b in LAT_BOUNDS)
    + ", lat_inf, retry_tokens"
)
ROLLUP_TABLES = ("metrics_summary", "metrics_status_summary", "metrics_slice", "metrics_status_slice")
BATCH_COLUMNS = (
    "ts, project_id, pipeline_id, stage_template, model_version, records_in, records_out, records_filtered, "
    "records_failed, duration_ms, succeeded"
)


# ---- Data -------------------------------------------------------------------------------------
def _token_pool(rng: random.Random, size: int) -> list[str]:
    """Pre-rendered row tails (everything but the time); rows pick one at random."""
    import bisect

    pool = []
    for _ in range(size):
        pipeline = rng.randrange(1, PIPELINES + 1)
        project = (pipeline - 1) % PROJECTS + 1
        status = rng.choice(STATUSES)
        requests = rng.randint(1, 20)
        mean = rng.lognormvariate(4.5, 0.8) if status == "OK" else rng.uniform(500, 12000)
        hist = [0] * (len(LAT_BOUNDS) + 1)
        hist[bisect.bisect_left(LAT_BOUNDS, mean)] = requests
        ok = status == "OK"
        prompt = requests * rng.randint(50, 400) if ok else 0
        completion = requests * rng.randint(5, 80) if ok else 0
        pool.append(
            "\t".join(
                map(
                    str,
                    [
                        project,
                        pipeline,
                        rng.choice(STAGES),
                        "bench-model",
                        rng.choice(MODEL_VERSIONS),
                        status,
                        requests,
                        requests,
                        prompt,
                        completion,
                        round(mean * requests, 2),
                        round(mean * 1.8, 2),
                        *hist,
                        0,  # retry_tokens: no call repeated
                    ],
                )
            )
        )
    return pool


def _batch_pool(rng: random.Random, size: int) -> list[str]:
    pool = []
    for _ in range(size):
        pipeline = rng.randrange(1, PIPELINES + 1)
        stage = rng.choice(STAGES)
        records_in = rng.choice([100, 500, 1000])
        failed_batch = rng.random() < 0.02
        failed = records_in if failed_batch else rng.randint(0, records_in // 50)
        filtered = 0 if failed_batch else rng.randint(0, records_in // 10)
        version = rng.choice(MODEL_VERSIONS) if stage == "model_inference" else ""
        pool.append(
            "\t".join(
                map(
                    str,
                    [
                        (pipeline - 1) % PROJECTS + 1,
                        pipeline,
                        stage,
                        version,
                        records_in,
                        records_in - failed - filtered,
                        filtered,
                        failed,
                        round(rng.uniform(50, 5000), 1),
                        "f" if failed_batch else "t",
                    ],
                )
            )
        )
    return pool


def _ts_text(sec: int, days: dict) -> str:
    day, rest = divmod(sec, 86400)
    date = days.get(day)
    if date is None:
        date = days[day] = datetime.fromtimestamp(day * 86400, UTC).strftime("%Y-%m-%d")
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return f"{date} {h:02d}:{m:02d}:{s:02d}+00"


def copy_events(conn, table: str, columns: str, pool: list[str], n: int, start: float, end: float, seed: int) -> None:
    """COPY n rows with times spread evenly over [start, end) (epoch seconds) and random tails."""
    rng = random.Random(seed)
    step = (end - start) / max(n, 1)
    days: dict = {}
    chunk = 100_000
    with conn.cursor() as cur, cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        for base in range(0, n, chunk):
            count = min(chunk, n - base)
            picks = rng.choices(pool, k=count)
            lines = [f"{_ts_text(int(start + (base + i) * step), days)}\t{picks[i]}\n" for i in range(count)]
            copy.write("".join(lines))


def insert_events(conn, table: str, columns: str, pool: list[str], n: int, start: float, end: float, seed: int) -> None:
    """SQLite's COPY: the same rows as `copy_events` (same seed, same times), as batched INSERTs."""
    rng = random.Random(seed)
    step = (end - start) / max(n, 1)
    days: dict = {}
    chunk = 100_000
    names = [c.strip() for c in columns.split(",")]
    boolean = {i for i, name in enumerate(names) if name == "succeeded"}
    tails = [[(1 if v == "t" else 0) if i + 1 in boolean else v for i, v in enumerate(t.split("\t"))] for t in pool]
    sql = f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(names))})"  # noqa: S608
    with conn:
        for base in range(0, n, chunk):
            count = min(chunk, n - base)
            picks = rng.choices(tails, k=count)
            conn.executemany(
                sql,
                (
                    # Django keeps SQLite datetimes as naive UTC text.
                    (_ts_text(int(start + (base + i) * step), days)[:-3], *picks[i])
                    for i in range(count)
                ),
            )


# ---- Load ---------------------------------------------------------------------------------------
def _fill(template: str, rng: random.Random) -> str:
    """A cold-cache URL: `{start}`/`{end}` become a random window (new to the cache almost surely)."""
    if "{start}" not in template:
        return template
    days = 30 if "{end}" in template else 0
    end = datetime.now(UTC) - timedelta(days=rng.randrange(0, 300), minutes=rng.randrange(0, 1440))
    start = end - timedelta(days=days or 1)
    return template.format(start=start.strftime("%Y-%m-%dT%H:%M"), end=end.strftime("%Y-%m-%dT%H:%M"))


def _client(url_paths: list[str], host: str, port: int, duration: float, seed: int, out) -> None:
    rng = random.Random(seed)
    conn = http.client.HTTPConnection(host, port, timeout=30)
    latencies, errors = [], 0
    deadline = time.perf_counter() + duration
    while time.perf_counter() < deadline:
        path = _fill(rng.choice(url_paths), rng)
        began = time.perf_counter()
        try:
            conn.request("GET", path, headers={"Accept": "application/json"})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                errors += 1
        except (OSError, http.client.HTTPException):
            errors += 1
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=30)
            continue
        latencies.append(time.perf_counter() - began)
    out.put((latencies, errors))


def load(url_paths: list[str], host: str, port: int, clients: int, duration: float) -> dict:
    """`clients` keep-alive clients (processes) for `duration` s: latency percentiles and req/s."""
    queue: mp.Queue = mp.Queue()
    procs = [mp.Process(target=_client, args=(url_paths, host, port, duration, i, queue)) for i in range(clients)]
    began = time.perf_counter()
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - began
    lat = sorted(x for r in results for x in r[0])
    errors = sum(r[1] for r in results)
    if not lat:
        return {"requests": 0, "errors": errors}
    q = statistics.quantiles(lat, n=100, method="inclusive")
    return {
        "requests": len(lat),
        "errors": errors,
        "rps": len(lat) / elapsed,
        "p50": q[49] * 1000,
        "p95": q[94] * 1000,
        "p99": q[98] * 1000,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(host: str, port: int, path: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(host, port, timeout=5)
            conn.request("GET", path)
            if conn.getresponse().status < 500:
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("gunicorn did not answer")


# ---- Scenarios ----------------------------------------------------------------------------------
# Each endpoint and its CSV export, warm (the same few URLs, cached after the first request) and
# cold (every request a new 30-day window at a random minute: a filter combination the cache has
# not seen, as an operator exploring would send). The warm ones are what the cache serves.
ENDPOINTS = {
    "kpis": "kpis/?{q}",
    "timeseries": "timeseries/?{q}",
    "stages": "stages/?{q}",
    "tokens": "tokens/?{q}&project=2",
    "request-structure": "request-structure/?{q}",
    "history month x12": "history/?{q}&period=month&periods=12&metric=tokens",
    "history week x12": "history/?{q}&period=week&periods=12",
    "history day x30": "history/?{q}&period=day&periods=30",
    "live": "live/?{q}",
}
CSV = {
    "kpis": "kpis/export.csv?{q}",
    "stages": "stages/export.csv?{q}",
    "history month x12": "history/export.csv?{q}&period=month&periods=12",
    "timeseries": "timeseries/export.csv?{q}",
}
COLD = "range=custom&start={start}&end={end}"
WARM = ["range=30d", "range=7d&project=1", "range=today"]


def scenarios():
    base = "/api/v1/metrics/"
    for label, templates in (("API", ENDPOINTS), ("CSV", CSV)):
        for name, path in templates.items():
            yield f"{label} {name}, cold", [base + path.format(q=COLD)]
            yield f"{label} {name}, warm", [base + path.format(q=q) for q in WARM]
    yield "dashboard page, cold", ["/dashboard/?" + COLD]
    yield "dashboard page, warm", ["/dashboard/?range=today", "/dashboard/?range=7d&project=1"]
    yield "dashboard refresh JSON, cold", ["/dashboard/data/?" + COLD + "&period=month"]
    yield "dashboard refresh JSON, warm", ["/dashboard/data/?range=today", "/dashboard/data/?range=30d&period=month"]


def _scans(node: dict) -> list[str]:
    out = []
    if "Relation Name" in node:
        out.append(f"{node['Node Type']} on {node['Relation Name']} ({node.get('Actual Rows', 0):,} rows)")
    for child in node.get("Plans", []):
        out.extend(_scans(child))
    return out


def explain_slowest(limit: int) -> list[tuple[str, str]]:
    """EXPLAIN (ANALYZE, BUFFERS) every rollup query of one cold request per endpoint; the slowest."""
    import json

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from metrics import selectors
    from metrics.filtersets import metrics_query

    end = datetime.now(UTC) - timedelta(days=17, minutes=13)
    query = metrics_query({"range": "custom", "start": (end - timedelta(days=30)).isoformat(), "end": end.isoformat()})
    calls = {
        "kpis": lambda: selectors.kpis(query),
        "timeseries": lambda: selectors.timeseries(query),
        "stages": lambda: selectors.stages_table(query),
        "tokens": lambda: selectors.token_usage(query),
        "request-structure": lambda: selectors.request_structure(query),
        "history month x12": lambda: selectors.history(query, period="month", periods=12),
        "history day x30": lambda: selectors.history(query, period="day", periods=30),
    }
    found = []
    for name, call in calls.items():
        with CaptureQueriesContext(connection) as captured:
            call()
        for q in captured.captured_queries:
            if not any(t in q["sql"] for t in ROLLUP_TABLES):
                continue
            with connection.cursor() as cur:
                cur.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + q["sql"])
                plan = cur.fetchone()[0]
            plan = (plan if isinstance(plan, list) else json.loads(plan))[0]
            scans = _scans(plan["Plan"])
            buffers = plan["Plan"].get("Shared Hit Blocks", 0) + plan["Plan"].get("Shared Read Blocks", 0)
            found.append((plan["Execution Time"], name, f"{buffers:,} buffers; " + "; ".join(scans)))
    found.sort(reverse=True)
    return [(f"EXPLAIN {name}", f"{ms:.1f} ms: {detail}") for ms, name, detail in found[:limit]]


# ---- Main ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def _raw_connection(sqlite: bool, db_url: str, settings):
    """A connection outside Django for the bulk load, and the function that writes rows with it."""
    if sqlite:
        import sqlite3

        conn = sqlite3.connect(settings.DATABASES["default"]["NAME"], timeout=60)
        try:
            yield conn, insert_events
        finally:
            conn.close()
        return
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        yield conn, copy_events


def _analyze(conn, sqlite: bool, tables: list[str]) -> None:
    for table in tables:
        conn.execute(f"ANALYZE {table}" if sqlite else f"VACUUM ANALYZE {table}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000, help="raw token-usage events over the year")
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per load scenario")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker")
    parser.add_argument("--skip-generate", action="store_true", help="reuse the database from a previous run")
    parser.add_argument("--skip-load", action="store_true", help="only generate and roll up")
    parser.add_argument("--jobs", type=int, default=2, help="days rolled up at once by the rebuild")
    parser.add_argument("--explain", type=int, default=3, help="EXPLAIN ANALYZE the N slowest cold queries")
    parser.add_argument("--backend", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument(
        "--server",
        choices=["wsgi", "asgi"],
        default="wsgi",
        help="wsgi: gunicorn threads (--threads); asgi: gunicorn with uvicorn workers, as the image runs the portal",
    )
    parser.add_argument("--only", default="", help="run only the load scenarios whose name matches this regex")
    args = parser.parse_args()
    sqlite = args.backend == "sqlite"

    db_url = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/df_bench")
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/4")
    db_name = urlparse(db_url).path.lstrip("/")
    if not sqlite and (db_name.startswith("test_") or db_name in {"df_metrics", "postgres"}):
        raise SystemExit(f"refusing to use {db_name!r}: the bench needs its own database")
    if sqlite:
        data_dir = os.environ.get("BENCH_DATA_DIR", "/tmp/df-metrics-bench-sqlite")
        if not args.skip_generate:
            shutil.rmtree(data_dir, ignore_errors=True)
        os.makedirs(data_dir, exist_ok=True)
    else:
        data_dir = tempfile.mkdtemp(prefix="df-metrics-bench-")
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")},
        "DATA_DIR": data_dir,
        "DEBUG": "false",
        "SECRET_KEY": "bench-" + "x" * 50,
        "SECRETS_ENCRYPTION_KEYS": "ZmFrZS1iZW5jaC1rZXktZmFrZS1iZW5jaC1rZXktMDA=",
        "SECURE_SSL_REDIRECT": "false",
        "SESSION_COOKIE_SECURE": "false",
        "CSRF_COOKIE_SECURE": "false",
        "LOG_LEVEL": "WARNING",
        "CONN_MAX_AGE": "600",
    }
    if not sqlite:
        env.update(DATABASE_URL=db_url, REDIS_URL=redis_url)
    for key in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"):
        os.environ.pop(key, None)
    os.environ.update(env)
    os.environ["DJANGO_SETTINGS_MODULE"] = "dataflare_portal.settings"

    if not sqlite:
        import psycopg

        admin_url = db_url.rsplit("/", 1)[0] + "/postgres"
        if not args.skip_generate:
            with psycopg.connect(admin_url, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{db_name}"')
                admin.execute(f'CREATE DATABASE "{db_name}"')

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    from metrics.services import metrics_rollup, metrics_rollup_rebuild

    report: list[tuple[str, str]] = []
    now = datetime.now(UTC)
    end = now.timestamp()
    start = (now - timedelta(days=args.days)).timestamp()
    call_command("migrate", verbosity=0)
    if not args.skip_load:
        # DEBUG is off (as in production): pages need the collected, hashed static files.
        call_command("collectstatic", interactive=False, verbosity=0)
    if not args.skip_generate:
        rng = random.Random(7)
        token_pool, batch_pool = _token_pool(rng, 60_000), _batch_pool(rng, 20_000)
        began = time.perf_counter()
        with _raw_connection(sqlite, db_url, settings) as (conn, write):
            write(conn, "tokens_usage", TOKEN_COLUMNS, token_pool, args.events, start, end - 120, 1)
            t_tokens = time.perf_counter() - began
            write(conn, "batch_events", BATCH_COLUMNS, batch_pool, args.events // 4, start, end - 120, 2)
            _analyze(conn, sqlite, ["tokens_usage", "batch_events"])
        took = time.perf_counter() - began
        report.append(
            (
                "generate (INSERT)" if sqlite else "generate (COPY)",
                f"{args.events:,} token + {args.events // 4:,} batch events in {took:.1f} s "
                f"({args.events / t_tokens:,.0f} token rows/s)",
            )
        )
        began = time.perf_counter()
        rows = metrics_rollup_rebuild(start=now - timedelta(days=args.days + 1), end=now, now=now, jobs=args.jobs)
        took = time.perf_counter() - began
        report.append(("rebuild the whole year", f"{took:.1f} s ({rows:,} rollup rows written, {args.jobs} jobs)"))
        with connection.cursor() as cur:
            for table in ROLLUP_TABLES:
                cur.execute(f"ANALYZE {table}" if sqlite else f"VACUUM ANALYZE {table}")
    from metrics.models import BatchEvent, TokenUsage
    from metrics.services import late_window, rollup_interval_seconds

    interval, late = rollup_interval_seconds(), late_window().total_seconds()

    def events_in(start: datetime, end: datetime) -> int:
        return sum(m.objects.filter(ts__gte=start, ts__lt=end).count() for m in (TokenUsage, BatchEvent))

    # A timed pass re-reads its late window (from the minute holding its start): events an earlier run wrote
    # there (its fresh minute) would be counted as this run's. Wait until they are out of it.
    newest = max(
        (t for m in (TokenUsage, BatchEvent) if (t := m.objects.order_by("-ts").values_list("ts", flat=True).first())),
        default=None,
    )
    wait = (newest - datetime.now(UTC)).total_seconds() + late + 65 if newest else 0
    if wait > 0:
        print(f"waiting {wait:.0f} s: events of an earlier run are inside the late window", flush=True)
        time.sleep(wait)
    began = time.perf_counter()
    metrics_rollup(now=datetime.now(UTC))
    report.append(("rollup pass (catching up)", f"{(time.perf_counter() - began) * 1000:.0f} ms"))

    # One minute of fresh events at 5,000 events/s, then one rollup pass.
    fresh_end = datetime.now(UTC).timestamp()
    rng = random.Random(11)
    with _raw_connection(sqlite, db_url, settings) as (conn, write):
        began = time.perf_counter()
        write(conn, "tokens_usage", TOKEN_COLUMNS, _token_pool(rng, 20_000), 300_000, fresh_end - 60, fresh_end, 3)
        copy_took = time.perf_counter() - began
    began = time.perf_counter()
    result = metrics_rollup(now=datetime.now(UTC))
    took = time.perf_counter() - began
    report.append(
        (
            "roll up 1 min at 5,000 ev/s",
            f"{took * 1000:.0f} ms for the pass (300,000 events written in {copy_took:.1f} s; "
            f"window {result.start:%H:%M:%S}..{result.end:%H:%M:%S}, {events_in(result.start, result.end):,} events)",
        )
    )
    # Steady traffic: a pass every ROLLUP_INTERVAL s; how much it re-reads depends on where it falls in the
    # minute (metrics_rollup), so several passes in a row are timed. Played a day back, in a stretch that
    # holds only the year's background events: the interval's events are written, then the pass runs with
    # its `now` at the interval's end. The watermark is put back to the present afterwards.
    passes = 4
    history = late + 60  # the late window's events before the first pass
    t0 = datetime.now(UTC) - timedelta(days=1)
    while events_in(t0 - timedelta(seconds=history + 60), t0 + timedelta(seconds=interval * passes)) > 10_000:
        t0 -= timedelta(minutes=10)  # an earlier run's passes: further back
    with _raw_connection(sqlite, db_url, settings) as (conn, write):
        write(
            conn,
            "tokens_usage",
            TOKEN_COLUMNS,
            _token_pool(rng, 20_000),
            int(5_000 * history),
            t0.timestamp() - history,
            t0.timestamp(),
            4,
        )
        metrics_rollup(now=t0)  # the pass before
        took = []
        for k in range(1, passes + 1):
            end = t0 + timedelta(seconds=interval * k)
            write(
                conn,
                "tokens_usage",
                TOKEN_COLUMNS,
                _token_pool(rng, 20_000),
                int(5_000 * interval),
                end.timestamp() - interval,
                end.timestamp(),
                4 + k,
            )
            began = time.perf_counter()
            metrics_rollup(now=end)
            took.append((time.perf_counter() - began) * 1000)
    metrics_rollup(now=datetime.now(UTC))
    report.append(
        (
            "steady 5,000 ev/s passes",
            f"{passes} passes {interval:g} s apart: {', '.join(f'{t:.0f}' for t in took)} ms "
            f"(median {statistics.median(took):.0f} ms; each re-reads the minutes since the previous pass and "
            "those leaving the late window)",
        )
    )
    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM metrics_summary")
        summary_rows = cur.fetchone()[0]
        if sqlite:
            raw_size = f"{Path(settings.DATABASES['default']['NAME']).stat().st_size / 2**20:,.0f} MB (whole database)"
        else:
            cur.execute("SELECT pg_size_pretty(pg_total_relation_size('tokens_usage'))")
            raw_size = cur.fetchone()[0]
    report.append(("sizes", f"metrics_summary {summary_rows:,} rows; tokens_usage {raw_size}"))

    if not args.skip_load:
        port = free_port()
        if args.server == "asgi":  # the image's command (Dockerfile): uvicorn workers, sync views in a thread each
            app, worker = "dataflare_portal.asgi:application", ["-k", "uvicorn_worker.UvicornWorker"]
        else:
            app, worker = "dataflare_portal.wsgi:application", ["--threads", str(args.threads)]
        gunicorn = subprocess.Popen(
            [
                str(BASE_DIR / ".venv/bin/gunicorn"),
                app,
                *worker,
                "-b",
                f"127.0.0.1:{port}",
                "-w",
                str(args.workers),
                "--log-level",
                "warning",
            ],
            cwd=BASE_DIR,
            env={**env, "PYTHONPATH": str(BASE_DIR)},
            start_new_session=True,
        )
        try:
            wait_http("127.0.0.1", port, "/healthz")
            for name, paths in scenarios():
                if args.only and not re.search(args.only, name):
                    continue
                for path in paths:  # warm every worker's connections (and, for warm scenarios, the cache)
                    for _ in range(args.workers * 2):
                        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                        conn.request("GET", _fill(path, random.Random(0)))
                        status = conn.getresponse().status
                        if status != 200:
                            raise RuntimeError(f"{path} answered {status}")
                r = load(paths, "127.0.0.1", port, args.clients, args.duration)
                report.append(
                    (
                        f"{name}",
                        f"p50 {r['p50']:.0f} ms, p95 {r['p95']:.0f} ms, p99 {r['p99']:.0f} ms, "
                        f"{r['rps']:.1f} req/s ({r['requests']} requests, {r['errors']} errors)",
                    )
                )
        finally:
            os.killpg(gunicorn.pid, signal.SIGTERM)
            gunicorn.wait(timeout=30)

    if args.explain and not sqlite:
        report.extend(explain_slowest(args.explain))
    with connection.cursor() as cur:
        # What the database holds, not what --events asked for: --skip-generate reuses an earlier load.
        cur.execute("SELECT count(*) FROM tokens_usage")
        held = cur.fetchone()[0]
    print()
    print(
        f"metrics bench: {held:,} token events over {args.days} days"
        f"{' (reused: --skip-generate)' if args.skip_generate else ''}, "
        f"{'SQLite' if sqlite else 'PostgreSQL'} {settings.DATABASES['default']['NAME']}, {os.cpu_count()} CPUs, "
        + (
            f"gunicorn {args.workers}x{args.threads}"
            if args.server == "wsgi"
            else f"gunicorn {args.workers} uvicorn workers"
        )
    )
    width = max(len(k) for k, _ in report)
    for key, value in report:
        print(f"  {key.ljust(width)}  {value}")


if __name__ == "__main__":
    main()
