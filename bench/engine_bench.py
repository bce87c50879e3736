"""Engine benchmark: read JSONL -> clean -> filter [-> dedup] -> publish JSONL, plain loop vs raw Celery vs engine.

Usage:
    .venv/bin/python bench/engine_bench.py --backend pg --sizes 100000,1000000 --rounds 3
    .venv/bin/python bench/engine_bench.py --backend pg --sizes 100000 --workload realistic --dedup
    .venv/bin/python bench/engine_bench.py --backend embedded --sizes 100000

All three use the same stage kinds and the same record codec (dataflare_portal/core/jsonl.py), so the
difference is the engine's own cost. With --dedup the plain loop runs the dedup kind after its chunks, raw
Celery runs it as one final task over its parts, the engine as its global unit; all outputs must agree.
Rounds are interleaved; the table gives medians with min-max and the load average.

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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
CLEAN = {"steps": [{"op": "normalize_whitespace"}, {"op": "strip_html"}, {"op": "normalize_unicode"}]}
FILTER = {"rules": [{"type": "length", "field": "text", "min": 20}]}
DEDUP = {"fields": ["text"]}
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

    from dataflare_portal.core import jsonl

    @shared_task(name="bench.raw_batch", ignore_result=True)
    def raw_batch(src: str, start: int, end: int, out: str) -> None:
        """Same work as one engine batch through clean and filter, with no database state at all."""
        records = []
        with open(src, "rb") as fh:
            fh.seek(start)
            data = fh.read(end - start)
        records = jsonl.loads_lines(data)
        records = process_plain(records)
        tmp = out + ".tmp"
        with open(tmp, "wb") as fh:
            fh.write(jsonl.dumps_lines(records))
        os.replace(tmp, out)

    @shared_task(name="bench.raw_dedup", ignore_result=True)
    def raw_dedup(parts: list, out: str) -> None:
        """The dedup stage over every part in order, in one task (as a single global unit would run it)."""
        chunks = (jsonl.loads_lines(Path(p).read_bytes()) for p in parts)
        tmp = out + ".tmp"
        with open(tmp, "wb") as fh:
            for result in dedup_plain(chunks):
                fh.write(jsonl.dumps_lines(result))
        os.replace(tmp, out)

    _RAW_TASK.append(raw_batch)
    _RAW_TASK.append(raw_dedup)
    return raw_batch


def dedup_plain(chunks):
    """The dedup stage kind over processed chunks, in order; yields the kept records per chunk."""
    import tempfile as _tempfile

    from pipelines.stagekinds import StageContext, registry

    with _tempfile.TemporaryDirectory(prefix="bench-dedup-") as tmp:
        ctx = StageContext(config=DEDUP, workspace=Path(tmp), stage_key="dedup")
        for result in registry.get("dedup").run_global(chunks, ctx):
            yield result.records


def process_plain(records: list[dict]) -> list[dict]:
    from pipelines.stagekinds import StageContext, registry

    clean = registry.get("clean").process(records, StageContext(config=CLEAN))
    return registry.get("filter").process(clean.records, StageContext(config=FILTER)).records


# ---- input ---------------------------------------------------------------------------------
REAL_WORDS = [*WORDS, "données", "naïve", "Straße", "東京", "数据", "工厂", "ｆｕｌｌ", "①②", "ﬁle", "emoji🙂"]


def make_input(path: Path, n: int, realistic: bool = False) -> None:
    """The bench input. `realistic`: longer text with HTML markup and entities, PII (e-mail addresses,
    phone numbers), mixed scripts and NFKC-sensitive characters, and 5 % exact duplicates of earlier records."""
    rng = random.Random(n)
    path.parent.mkdir(parents=True, exist_ok=True)
    texts: list[str] = []
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            if not realistic:
                words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 30)))
                text = f"<p>{words}</p>  #{i}" if i % 3 else f"  {words}   #{i} "
            elif texts and rng.random() < 0.05:
                text = rng.choice(texts)
            else:
                words = [rng.choice(REAL_WORDS) for _ in range(rng.randint(5, 120))]
                if rng.random() < 0.3:
                    words.insert(rng.randrange(len(words)), f"user{i}@example.com")
                if rng.random() < 0.2:
                    words.insert(rng.randrange(len(words)), f"+1 (555) {i % 1000:03d}-{i % 10000:04d}")
                body = " ".join(words)
                text = (
                    f'<div class="post"><h2>Post {i}</h2><p>{body}</p>&nbsp;&amp; <a href="/x/{i}">more</a></div>'
                    if rng.random() < 0.6
                    else f"  {body}\t\n #{i} "
                )
                if len(texts) < 5000:
                    texts.append(text)
            fh.write(json.dumps({"id": i, "text": text, "lang": "en"}, ensure_ascii=False) + "\n")


# ---- plain loop --------------------------------------------------------------------------------
def plain_loop(src: Path, dst: Path, batch_size: int, dedup: bool = False) -> tuple[float, int]:
    """One process: read, clean, filter (and dedup) chunk by chunk, write JSONL; the same codec as the engine."""
    from dataflare_portal.core import jsonl

    started = time.perf_counter()
    out = 0

    def processed():
        with open(src, "rb") as fin:
            chunk = []
            for line in fin:
                chunk.append(line)
                if len(chunk) >= batch_size:
                    yield process_plain(jsonl.loads_lines(chunk))
                    chunk = []
            if chunk:
                yield process_plain(jsonl.loads_lines(chunk))

    with open(dst, "wb") as fout:
        for kept in dedup_plain(processed()) if dedup else processed():
            fout.write(jsonl.dumps_lines(kept))
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
def engine_run(env: dict, root: Path, n: int, workers: int, batch_size: int, dedup: bool = False) -> dict:
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
    stages = [("read", "read", {}), ("clean", "clean", CLEAN), ("filter", "filter", FILTER)]
    stages += [("dedup", "dedup", DEDUP)] if dedup else []
    for pos, (key, kind, config) in enumerate([*stages, ("publish", "publish", {})]):
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
        # Units: the batches that were claimed (fused followers are born succeeded inside their head).
        heads = Batch.objects.filter(stage_run__run=run).exclude(input_ref__has_key="fused_into")
        units = heads.count()
        work_ms = sum(Batch.objects.filter(stage_run__run=run).values_list("duration_ms", flat=True))
        read_sizes = sorted(
            Batch.objects.filter(stage_run__run=run, stage_run__kind="read").values_list("records_in", flat=True)
        )
        dedup_span = _dedup_span(run) if dedup else None
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
        "units": units,
        "work_ms_per_unit": work_ms / max(1, units),
        # Worker time per unit (wall x workers / units) less the time the batches recorded as their work.
        "worker_ms_per_unit": elapsed * 1000 * workers / max(1, units),
        "records_per_read": read_sizes[len(read_sizes) // 2] if read_sizes else 0,
        "dedup_span_s": dedup_span,
    }


def _dedup_span(run) -> float | None:
    """Seconds from the first claim of a dedup batch to the dedup stage's completion (its span in the wall)."""
    from django.db.models import Min

    from tasks.models import Batch, StageRun

    stage = StageRun.objects.filter(run=run, kind="dedup").first()
    if stage is None or stage.finished_at is None:
        return None
    first = Batch.objects.filter(stage_run=stage).aggregate(t=Min("started_at"))["t"]
    return (stage.finished_at - first).total_seconds() if first else None


def raw_celery(
    env: dict, root: Path, src: Path, workers: int, batch_size: int, dedup: bool = False
) -> tuple[float, int, list]:
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
        if dedup:
            deduped = root / "raw-dedup.jsonl"
            deduped.unlink(missing_ok=True)
            _RAW_TASK[1].apply_async(
                args=[[str(parts / f"{i}.jsonl") for i in range(n_parts)], str(deduped)], queue="stages"
            )
            while not deduped.exists():
                time.sleep(0.02)
            out = deduped.read_bytes().count(b"\n")
            os.replace(deduped, root / "raw-out.jsonl")
        else:
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
    parser.add_argument("--batch-size", type=int, default=1000, help="records per raw-Celery task and plain-loop chunk")
    parser.add_argument(
        "--engine-batch", type=int, default=0, help="the engine pipeline's batch size, a ceiling (default --batch-size)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--workload", choices=["simple", "realistic"], default="simple")
    parser.add_argument("--dedup", action="store_true", help="add an exact dedup stage (a global unit) before publish")
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
    engine_batch = args.engine_batch or args.batch_size
    # Interleaved rounds: plain, raw Celery and the engine take turns, so a change in machine load hits
    # all of them alike; medians with min and max are reported, and the load average around each run.
    samples: dict = {}
    loads: list = []

    def add(key, seconds, out, extra=None):
        samples.setdefault(key, []).append((seconds, out, extra or {}))
        loads.append(os.getloadavg()[0])

    for n in sizes:
        src = root / "files" / f"in-{n}.jsonl"
        make_input(src, n, realistic=args.workload == "realistic")
        for r in range(args.rounds):
            plain_s, plain_out = plain_loop(src, root / f"plain-{n}.jsonl", args.batch_size, dedup=args.dedup)
            add((n, "plain loop", 1), plain_s, plain_out)
            print(f"  round {r + 1}: {n:,} plain loop: {plain_s:.2f}s (load {os.getloadavg()[0]:.1f})", flush=True)
            for w in worker_counts:
                raw_s, raw_out, raw_rss = raw_celery(env, root, src, w, args.batch_size, dedup=args.dedup)
                assert raw_out == plain_out, (raw_out, plain_out)
                add((n, "raw Celery", w), raw_s, raw_out, {"rss": raw_rss})
                print(f"  round {r + 1}: {n:,} raw celery x{w}: {raw_s:.2f}s", flush=True)
                res = engine_run(env, root, n, w, engine_batch, dedup=args.dedup)
                assert res["records_out"] == plain_out, (res["records_out"], plain_out)
                add((n, "engine", w), res["seconds"], res["records_out"], res)
                print(
                    f"  round {r + 1}: {n:,} engine x{w}: {res['seconds']:.2f}s, {res['units']} units of "
                    f"~{res['records_per_read']} records, work {res['work_ms_per_unit']:.1f} ms / "
                    f"worker time {res['worker_ms_per_unit']:.1f} ms per unit"
                    + (f", dedup span {res['dedup_span_s']:.2f}s" if res.get("dedup_span_s") is not None else ""),
                    flush=True,
                )
                shutil.rmtree(root / "workspace" / "runs", ignore_errors=True)

    def med(values):
        return statistics.median(values)

    print()
    print(
        f"backend={args.backend} workload={args.workload} dedup={args.dedup} batch_size={args.batch_size} "
        f"engine_ceiling={engine_batch} rounds={args.rounds} python={sys.version.split()[0]} cpus={os.cpu_count()} "
        f"load average during runs: median {med(loads):.1f}, min {min(loads):.1f}, max {max(loads):.1f}"
    )
    header = (
        f"{'records':>9} | {'mode':<10} | {'workers':>7} | {'records/s median (min-max)':>28} | {'vs plain':>8} | "
        f"{'first batch':>11} | {'units':>6} | {'work/unit':>9} | {'worker/unit':>11} | "
        f"{'peak RSS MB':<12} | {'out':>8}"
    )
    print(header)
    print("-" * len(header))
    rates = {}
    for (n, mode, w), runs in samples.items():
        rs = [n / sec for sec, _o, _e in runs]
        rates[(n, mode, w)] = med(rs)
    for (n, mode, w), runs in samples.items():
        rs = [n / sec for sec, _o, _e in runs]
        extras = [e for _s, _o, e in runs]
        first = [e["first_batch_s"] for e in extras if "first_batch_s" in e]
        rss = [max(e["rss"]) for e in extras if e.get("rss")]
        units = [e["units"] for e in extras if "units" in e]
        work = [e["work_ms_per_unit"] for e in extras if "work_ms_per_unit" in e]
        wall = [e["worker_ms_per_unit"] for e in extras if "worker_ms_per_unit" in e]
        print(
            f"{n:>9,} | {mode:<10} | {w:>7} | {med(rs):>10,.0f} ({min(rs):>7,.0f}-{max(rs):>7,.0f}) | "
            f"{med(rs) / rates[(n, 'plain loop', 1)]:>7.2f}x | "
            f"{(f'{med(first) * 1000:.0f} ms' if first else '-'):>11} | {(str(med(units)) if units else '-'):>6} | "
            f"{(f'{med(work):.1f} ms' if work else '-'):>9} | {(f'{med(wall):.1f} ms' if wall else '-'):>11} | "
            f"{(f'{max(rss):.0f}' if rss else '-'):<12} | {runs[0][1]:>8,}"
        )
    print()
    for (n, _mode, w), runs in samples.items():
        spans = [e["dedup_span_s"] for _s, _o, e in runs if e.get("dedup_span_s") is not None]
        if spans:
            walls = [sec for sec, _o, _e in runs]
            print(
                f"{n:,} records, engine x{w}: dedup span median {med(spans):.2f}s "
                f"({min(spans):.2f}-{max(spans):.2f}), {med(spans) / med(walls):.0%} of the median wall"
            )
    for n in sizes:
        for w in worker_counts:
            print(
                f"{n:,} records, {w} worker(s): engine runs at "
                f"{rates[(n, 'engine', w)] / rates[(n, 'raw Celery', w)]:.0%} of raw Celery (medians)"
            )
    print(f"(workdir {root})")


if __name__ == "__main__":
    main()
