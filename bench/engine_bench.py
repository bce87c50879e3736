"""Engine benchmark: read JSONL -> clean -> filter -> publish JSONL, plain loop vs raw Celery vs our engine.

Usage:
    .venv/bin/python bench/engine_bench.py --backend pg --sizes 100000,1000000
    .venv/bin/python bench/engine_bench.py --backend embedded --sizes 100000

--backend pg uses PostgreSQL (BENCH_DATABASE_URL, default postgres://postgres@127.0.0.1:5432/df_engine) and
Redis (BENCH_REDIS_URL, default redis://127.0.0.1:6379/3); --backend embedded uses a SQLite file and the
SQLite transport in a temp folder. Workers are real `celery worker -P solo` processes (one process each), so
"2 workers" means two processes. Prints one table: records/s, ratio to the plain loop, time from the start
request to the first batch running, and each worker's peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
CLEAN = {"steps": [{"op": "normalize_whitespace"}, {"op": "strip_html"}, {"op": "normalize_unicode"}]}
FILTER = {"rules": [{"type": "length", "field": "text", "min": 20}]}
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "sigma"]


# ---- environment (set before Django loads) -------------------------------------------------
def bench_env(backend: str, root: Path) -> dict:
    env = {
        "DATA_DIR": str(root / "data"),
        "WORKSPACE_DIR": str(root / "workspace"),
        "FILE_ROOTS": str(root / "files"),
        "LOG_LEVEL": "WARNING",
        # Production settings: DEBUG off (its cursor wrapper records every query), throwaway keys.
        "DEBUG": "false",
        # (workers inherit the parent's keys through their environment)
        "SECRET_KEY": os.environ.get("SECRET_KEY") or "bench-" + base64.urlsafe_b64encode(os.urandom(30)).decode(),
        "SECRETS_ENCRYPTION_KEYS": os.environ.get("SECRETS_ENCRYPTION_KEYS")
        or base64.urlsafe_b64encode(os.urandom(32)).decode(),
    }
    if backend == "pg":
        env["DATABASE_URL"] = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/df_engine")
        env["REDIS_URL"] = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/3")
        env["CELERY_BROKER_URL"] = env["REDIS_URL"]
    else:
        env["DATABASE_URL"] = f"sqlite:///{root / 'data' / 'portal.sqlite3'}"
        env["CELERY_BROKER_URL"] = f"sqla+sqlite:///{root / 'data' / 'broker.sqlite3'}"
    return env


def setup_django(env: dict) -> None:
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dataflare_portal.settings")
    sys.path.insert(0, str(BASE_DIR))
    import django

    django.setup()


# ---- the raw-Celery baseline task (registered in the bench worker) ---------------------------
_RAW_TASK = []


def register_raw_task():
    """The bench's raw-Celery task, registered once per process (the worker and the driver both need it)."""
    if _RAW_TASK:
        return _RAW_TASK[0]
    from celery import shared_task

    @shared_task(name="bench.raw_batch", ignore_result=True)
    def raw_batch(src: str, start: int, end: int, out: str) -> None:
        """Same work as one engine batch through clean and filter, with no database state at all."""
        records = []
        with open(src, "rb") as fh:
            fh.seek(start)
            data = fh.read(end - start)
        records = [json.loads(line) for line in data.splitlines() if line.strip()]
        records = process_plain(records)
        tmp = out + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records))
        os.replace(tmp, out)

    _RAW_TASK.append(raw_batch)
    return raw_batch


def process_plain(records: list[dict]) -> list[dict]:
    from pipelines.stagekinds import StageContext, registry

    clean = registry.get("clean").process(records, StageContext(config=CLEAN))
    return registry.get("filter").process(clean.records, StageContext(config=FILTER)).records


# ---- input ---------------------------------------------------------------------------------
def make_input(path: Path, n: int) -> None:
    rng = random.Random(n)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 30)))
            text = f"<p>{words}</p>  #{i}" if i % 3 else f"  {words}   #{i} "
            fh.write(json.dumps({"id": i, "text": text, "lang": "en"}) + "\n")


# ---- plain loop --------------------------------------------------------------------------------
def plain_loop(src: Path, dst: Path, batch_size: int) -> tuple[float, int]:
    started = time.perf_counter()
    out = 0
    with open(src, "rb") as fin, open(dst, "w", encoding="utf-8") as fout:
        chunk = []
        for line in fin:
            chunk.append(json.loads(line))
            if len(chunk) >= batch_size:
                kept = process_plain(chunk)
                fout.write("".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in kept))
                out += len(kept)
                chunk = []
        if chunk:
            kept = process_plain(chunk)
            fout.write("".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in kept))
            out += len(kept)
    return time.perf_counter() - started, out


# ---- workers -------------------------------------------------------------------------------------
def start_workers(env: dict, n: int, root: Path) -> list[subprocess.Popen]:
    procs = []
    for i in range(n):
        log = open(root / f"worker{i}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                "--backend",
                env["_backend"],
                "--root",
                str(root),
                "--",
                "worker",
                "-n",
                f"bench{i}@%h",
                "-P",
                "solo",
                "-Q",
                "default,stages,inference",
                "--without-gossip",
                "--without-mingle",
                "-l",
                "WARNING",
            ],
            cwd=BASE_DIR,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(proc)
    from tasks.models import WorkerHeartbeat

    deadline = time.monotonic() + 60
    while WorkerHeartbeat.objects.filter(name__startswith="bench").count() < n:
        if time.monotonic() > deadline:
            raise SystemExit("workers did not start; see " + str(root))
        time.sleep(0.1)
    return procs


def peak_rss_mb(proc: subprocess.Popen) -> float:
    try:
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def stop_workers(procs) -> list[float]:
    rss = [peak_rss_mb(p) for p in procs]
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=20)
        except Exception:
            os.killpg(p.pid, signal.SIGKILL)
    from tasks.models import WorkerHeartbeat

    WorkerHeartbeat.objects.filter(name__startswith="bench").delete()
    return rss


# ---- engine run ----------------------------------------------------------------------------------
def engine_run(env: dict, root: Path, n: int, workers: int, batch_size: int) -> dict:
    from catalog.models import Dataset, DataSource, Project
    from pipelines.models import Pipeline, PipelineStage
    from tasks.choices import RunStatus
    from tasks.models import Batch
    from tasks.services import run_start

    tag = f"{n}-{workers}-{int(time.time())}"
    project, _ = Project.objects.get_or_create(name="Bench", defaults={"slug": "bench"})
    source, _ = DataSource.objects.get_or_create(
        project=project, name="bench-files", defaults={"kind": "file", "config": {"root": str(root / "files")}}
    )
    source.config = {"root": str(root / "files")}
    source.save()
    inp = Dataset.objects.create(
        project=project, source=source, name=f"in-{tag}", format="jsonl", location=f"in-{n}.jsonl"
    )
    out = Dataset.objects.create(
        project=project, source=source, name=f"out-{tag}", format="jsonl", location=f"out/{tag}.jsonl"
    )
    pipeline = Pipeline.objects.create(
        project=project, name=f"bench-{tag}", input_dataset=inp, output_dataset=out, batch_size=batch_size
    )
    for pos, (key, kind, config) in enumerate(
        [("read", "read", {}), ("clean", "clean", CLEAN), ("filter", "filter", FILTER), ("publish", "publish", {})]
    ):
        PipelineStage.objects.create(pipeline=pipeline, key=key, kind=kind, position=pos, config=config)
    procs = start_workers(env, workers, root)
    try:
        from django.utils import timezone

        t_request = timezone.now()
        started = time.perf_counter()
        run = run_start(pipeline=pipeline, actor=None)
        while True:
            run.refresh_from_db()
            if run.status in RunStatus.terminal():
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        first = (
            Batch.objects.filter(stage_run__run=run, started_at__isnull=False)
            .order_by("started_at")
            .values_list("started_at", flat=True)
            .first()
        )
    finally:
        rss = stop_workers(procs)
    if run.status != RunStatus.SUCCEEDED:
        raise SystemExit(f"run {run.pk} ended {run.status}: {run.status_reason}")
    return {
        "seconds": elapsed,
        "records_out": run.records_out,
        "first_batch_s": (first - t_request).total_seconds() if first else float("nan"),
        "rss": rss,
        "run": run,
    }


def raw_celery(env: dict, root: Path, src: Path, workers: int, batch_size: int) -> tuple[float, int, list]:
    """The same work split into the same batches as bare Celery tasks (no DB state), then concatenated."""
    from dataflare_portal.celery import app

    raw = register_raw_task()
    parts = root / "raw-parts"
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir()
    procs = start_workers(env, workers, root)
    try:
        started = time.perf_counter()
        offsets = [0]
        with open(src, "rb") as fh:
            count = 0
            for _line in fh:
                count += 1
                if count == batch_size:
                    offsets.append(fh.tell())
                    count = 0
            end = fh.tell()
        if offsets[-1] != end:
            offsets.append(end)
        n_parts = len(offsets) - 1
        with app.producer_or_acquire() as producer:
            for i in range(n_parts):
                raw.apply_async(
                    args=[str(src), offsets[i], offsets[i + 1], str(parts / f"{i}.jsonl")],
                    queue="stages",
                    producer=producer,
                )
        while len(list(parts.glob("*.jsonl"))) < n_parts:
            time.sleep(0.02)
        out = 0
        with open(root / "raw-out.jsonl", "wb") as fout:
            for i in range(n_parts):
                data = (parts / f"{i}.jsonl").read_bytes()
                out += data.count(b"\n")
                fout.write(data)
        elapsed = time.perf_counter() - started
    finally:
        rss = stop_workers(procs)
    return elapsed, out, rss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=["pg", "embedded"], default="pg")
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--root", default="")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*")
    args = parser.parse_args()

    if args.worker:
        root = Path(args.root)
        env = bench_env(args.backend, root)
        setup_django(env)
        from dataflare_portal.celery import app, tune_embedded_transport

        register_raw_task()
        tune_embedded_transport()
        app.worker_main(args.rest)
        return

    root = Path(args.root or tempfile.mkdtemp(prefix="df-bench-"))
    for d in ("data", "workspace", "files"):
        (root / d).mkdir(parents=True, exist_ok=True)
    env = bench_env(args.backend, root)
    env["_backend"] = args.backend
    setup_django(env)
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from dataflare_portal.celery import app, tune_embedded_transport

    tune_embedded_transport()
    with app.connection_for_write() as conn:
        for q in ("default", "stages", "inference"):
            try:
                conn.default_channel.queue_purge(q)
            except Exception as exc:
                print(f"(purge {q}: {exc})")

    sizes = [int(s) for s in args.sizes.split(",") if s]
    worker_counts = [int(w) for w in args.workers.split(",") if w]
    rows = []
    for n in sizes:
        src = root / "files" / f"in-{n}.jsonl"
        make_input(src, n)
        plain_s, plain_out = plain_loop(src, root / f"plain-{n}.jsonl", args.batch_size)
        rows.append((n, "plain loop", 1, n / plain_s, 1.0, None, None, plain_out))
        print(f"  {n:,} plain loop: {plain_s:.2f}s", flush=True)
        for w in worker_counts:
            raw_s, raw_out, raw_rss = raw_celery(env, root, src, w, args.batch_size)
            rows.append((n, "raw Celery", w, n / raw_s, (n / raw_s) / (n / plain_s), None, raw_rss, raw_out))
            print(f"  {n:,} raw celery x{w}: {raw_s:.2f}s", flush=True)
            res = engine_run(env, root, n, w, args.batch_size)
            assert res["records_out"] == plain_out, (res["records_out"], plain_out)
            rate = n / res["seconds"]
            rows.append(
                (n, "engine", w, rate, rate / (n / plain_s), res["first_batch_s"], res["rss"], res["records_out"])
            )
            print(f"  {n:,} engine x{w}: {res['seconds']:.2f}s", flush=True)
            shutil.rmtree(root / "workspace" / "runs", ignore_errors=True)

    print()
    print(f"backend={args.backend} batch_size={args.batch_size} python={sys.version.split()[0]} cpus={os.cpu_count()}")
    header = (
        f"{'records':>9} | {'mode':<10} | {'workers':>7} | {'records/s':>10} | {'vs plain':>8} | "
        f"{'first batch':>11} | {'peak RSS MB (per worker)':<24} | {'out':>8}"
    )
    print(header)
    print("-" * len(header))
    for n, mode, w, rate, ratio, first, rss, out in rows:
        first_s = f"{first * 1000:.0f} ms" if first is not None else "-"
        rss_s = ", ".join(f"{r:.0f}" for r in rss) if rss else "-"
        print(
            f"{n:>9,} | {mode:<10} | {w:>7} | {rate:>10,.0f} | {ratio:>7.2f}x | {first_s:>11} | {rss_s:<24} | {out:>8,}"
        )
    # Engine vs raw Celery at the same worker count.
    print()
    for n in sizes:
        for w in worker_counts:
            raw = next(r for r in rows if r[0] == n and r[1] == "raw Celery" and r[2] == w)
            eng = next(r for r in rows if r[0] == n and r[1] == "engine" and r[2] == w)
            print(f"{n:,} records, {w} worker(s): engine runs at {eng[3] / raw[3]:.0%} of raw Celery")
    print(f"(workdir {root})")


if __name__ == "__main__":
    main()
