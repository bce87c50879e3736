"""Orchestration overhead of model inference: a pipeline run by the engine vs a plain client loop.

Both sides use the same records, the same records per call (ModelConfig.batch_size) and the same reference
server process (`python -m modelserver`, started here on a free loopback port):

- pipeline: read → model_inference → publish, run by real Celery workers (`celery worker`), as in production;
  timed from run_start to SUCCEEDED (end to end) and over the inference stage alone (first batch start to
  last batch end);
- plain client: a ModelClient loop over the same records, with the same total in-flight calls as the workers
  (processes × ModelConfig.max_in_flight), and with 1 in flight for reference.

The ratio pipeline records/s ÷ plain records/s is the orchestration overhead (goal: ≥ 80%).

Usage: .venv/bin/python bench/inference_bench.py [--records 20000] [--model annotator] [--call-batch 64]
       [--engine-batch 2000] [--max-in-flight 4] [--workers 2] [--database-url postgres://...]
       [--redis-url redis://...]
Without --database-url/--redis-url it uses the embedded default (SQLite + the SQLite broker) in a temp folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SENTENCES = [
    "The central bank held interest rates steady on Tuesday, and investors welcomed the decision.",
    "Researchers released a new open dataset of annotated clinical notes for language models.",
    "The football club signed a young striker after a long season of negotiations.",
    "Heavy rain flooded several streets in the old town, and the river rose above its banks.",
    "研究人员发布了新的人工智能模型，用于改进中文文本的质量评估。",
    "A new smartphone with a faster chip and a better camera goes on sale next month.",
]


def make_records(n: int) -> list[dict]:
    """Deterministic, varied text records (a few sentences each)."""
    out = []
    for i in range(n):
        k = 2 + i % 4
        text = " ".join(SENTENCES[(i + j) % len(SENTENCES)] for j in range(k))
        out.append({"id": i, "text": f"{text} (record {i})"})
    return out


# ---- the reference server in its own process -----------------------------------------------------------
def start_server(threads: int, latency_ms: float = 0.0) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "modelserver", "--port", "0", "--workers", str(threads), "--log-level", "WARNING"]
    if latency_ms:
        # Stands for a model server whose time goes to an accelerator, not to this machine's CPUs.
        cmd += ["--latency-ms", str(latency_ms)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # "modelserver listening on 127.0.0.1:PORT"
    return proc, line.rsplit(" ", 1)[-1].strip()


# ---- plain client -------------------------------------------------------------------------------------
def plain_client(
    address: str, model: str, texts: list[str], call_batch: int, in_flight: int, *, warm: bool = True
) -> dict:
    """Records/s of a plain ModelClient loop over the texts, `in_flight` calls at a time."""
    from modelclient import BreakerPolicy, ModelClient, ModelEndpoint
    from modelclient.channels import ChannelPool

    pool = ChannelPool()
    client = ModelClient(channel_pool=pool)
    config = ModelEndpoint(
        address, model, deadline_s=60, max_in_flight=in_flight, breaker=BreakerPolicy(failure_threshold=1000)
    )
    if warm:
        client.infer_texts(config, texts[:call_batch])  # warm the channel up
    chunks = [texts[i : i + call_batch] for i in range(0, len(texts), call_batch)]
    tokens = [0]
    lock = threading.Lock()

    def call(chunk: list[str]) -> None:
        res = client.infer_texts(config, chunk)
        with lock:
            tokens[0] += res.prompt_tokens + res.completion_tokens

    started = time.perf_counter()
    if in_flight == 1:
        for chunk in chunks:
            call(chunk)
    else:
        with ThreadPoolExecutor(in_flight) as ex:
            list(ex.map(call, chunks))
    elapsed = time.perf_counter() - started
    pool.close()
    return {"seconds": elapsed, "records_s": len(texts) / elapsed, "calls": len(chunks), "tokens": tokens[0]}


def _plain_part(address: str, model: str, texts: list[str], call_batch: int, in_flight: int, start_at: float) -> float:
    """One process of the multi-process plain client: wait for the common start, run, return the end time."""
    while time.time() < start_at:
        time.sleep(0.001)
    plain_client(address, model, texts, call_batch, in_flight, warm=False)
    return time.time()


def plain_client_processes(
    address: str, model: str, texts: list[str], call_batch: int, in_flight: int, processes: int
) -> dict:
    """The plain client split over `processes` processes (like the worker's prefork pool), same start."""
    import multiprocessing

    chunks = [texts[i : i + call_batch] for i in range(0, len(texts), call_batch)]
    parts = [[t for chunk in chunks[p::processes] for t in chunk] for p in range(processes)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes) as pool:
        start_at = time.time() + 3.0  # after every process has imported grpc
        ends = pool.starmap(_plain_part, [(address, model, part, call_batch, in_flight, start_at) for part in parts])
    elapsed = max(ends) - start_at
    return {"seconds": elapsed, "records_s": len(texts) / elapsed, "calls": len(chunks)}


# ---- the pipeline -------------------------------------------------------------------------------------
def pipeline_env(tmp: Path, args) -> dict[str, str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "dataflare_portal.settings",
        "DATA_DIR": str(tmp / "data"),
        "WORKSPACE_DIR": str(tmp / "data" / "workspace"),
        "FILE_ROOTS": str(tmp / "files"),
        "LOG_LEVEL": "WARNING",
    }
    env["DATABASE_URL"] = args.database_url or f"sqlite:///{tmp / 'data' / 'portal.sqlite3'}"
    if args.redis_url:
        env["REDIS_URL"] = args.redis_url
    else:
        env.pop("REDIS_URL", None)
        env.pop("CELERY_BROKER_URL", None)
    return env


class PipelineBench:
    """A database with the input file, real Celery workers, and a fresh pipeline per timed run."""

    def __init__(self, address: str, records: list[dict], args, tmp: Path) -> None:
        self.address, self.records, self.args, self.tmp = address, records, args, tmp
        env = self.env = pipeline_env(tmp, args)
        (tmp / "files" / "in").mkdir(parents=True, exist_ok=True)
        with open(tmp / "files" / "in" / "bench.jsonl", "w", encoding="utf-8") as fh:
            for r in records:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.environ.update(env)
        for key in ("REDIS_URL", "CELERY_BROKER_URL"):
            if key not in env:
                os.environ.pop(key, None)
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=REPO,
            env=env,
            check=True,
            timeout=600,
        )
        import django

        django.setup()
        if args.redis_url:
            import redis

            redis.Redis.from_url(args.redis_url).flushdb()  # the bench's own DB: stale messages and breakers
        self.workers: list[subprocess.Popen] = []

    def start_workers(self) -> None:
        from tasks.models import WorkerHeartbeat

        WorkerHeartbeat.objects.filter(name__startswith="bench").delete()
        # Production layout (STYLE.md: separate queues for CPU stages and gRPC-bound stages): the model stage's
        # batches go to their own worker(s), so reads and publishing never queue behind model calls.
        specs = [(f"bench{w}", self.args.pool, self.args.concurrency, "inference") for w in range(self.args.workers)]
        if self.args.split_queues:
            specs.append(("benchstages", "prefork", 1, "default,stages"))
        else:
            specs = [(name, pool, c, "default,stages,inference") for name, pool, c, _q in specs]
        for name, pool, concurrency, queues in specs:
            log = open(self.tmp / f"worker-{name}.log", "ab")  # noqa: SIM115 - lives as long as the worker
            cmd = [sys.executable, "-m", "celery", "-A", "dataflare_portal", "worker", "-n", f"{name}@%h"]
            cmd += ["-P", pool, "-c", str(concurrency), "-Q", queues, "--without-gossip", "--without-mingle"]
            cmd += ["-l", "WARNING"]
            self.workers.append(
                subprocess.Popen(
                    cmd, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
        deadline = time.time() + 120
        while WorkerHeartbeat.objects.filter(name__startswith="bench").count() < len(specs):
            if time.time() > deadline or any(p.poll() is not None for p in self.workers):
                raise SystemExit(f"workers did not start; see {self.tmp}/worker-*.log")
            time.sleep(0.2)

    def stop_workers(self) -> None:
        for p in self.workers:
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(p.pid, signal.SIGKILL)

    def _pipeline(self, tag: str):
        from catalog.models import Dataset, DataSource, Project
        from pipelines.models import ModelConfig, Pipeline, PipelineStage

        args = self.args
        project = Project.objects.create(name=tag, slug=tag)
        source = DataSource.objects.create(
            project=project, name="files", kind="file", config={"root": str(self.tmp / "files")}
        )
        inp = Dataset.objects.create(
            project=project, source=source, name=f"{tag}-in", format="jsonl", location="in/bench.jsonl"
        )
        out = Dataset.objects.create(
            project=project, source=source, name=f"{tag}-out", format="jsonl", location=f"out/{tag}.jsonl"
        )
        mc = ModelConfig.objects.create(
            name=tag,
            endpoint=self.address,
            model_name=args.model,
            batch_size=args.call_batch,
            max_in_flight=args.max_in_flight,
            deadline_ms=60_000,
        )
        pipeline = Pipeline.objects.create(
            project=project,
            name=tag,
            input_dataset=inp,
            output_dataset=out,
            batch_size=args.engine_batch,
            max_batch_attempts=3,
        )
        stages = [
            ("read", "read", {}, None),
            ("infer", "model_inference", {"output_field": "model"}, mc),
            ("publish", "publish", {}, None),
        ]
        for pos, (key, kind, config, model_config) in enumerate(stages):
            PipelineStage.objects.create(
                pipeline=pipeline, key=key, kind=kind, position=pos, config=config, model_config=model_config
            )
        return pipeline

    def run(self, n: int) -> dict:
        """One timed run of a fresh pipeline (run_start → SUCCEEDED), reaping as beat would."""
        from django.db.models import Max, Min

        from metrics.models import TokenUsage
        from tasks.choices import RunStatus
        from tasks.models import Batch, TaskRun
        from tasks.services import reap, run_start

        pipeline = self._pipeline(f"bench-{int(time.time())}-{n}")
        started = time.perf_counter()
        run = run_start(pipeline=pipeline, actor=None)
        last_reap = time.perf_counter()
        while True:
            status = TaskRun.objects.values_list("status", flat=True).get(pk=run.pk)
            if status in RunStatus.terminal():
                break
            if time.perf_counter() - last_reap > 5:  # what beat does in production (lost messages, waits)
                reap()
                last_reap = time.perf_counter()
            time.sleep(0.1)  # coarse on purpose: the poller must not take CPU from the workers
        elapsed = time.perf_counter() - started
        run.refresh_from_db()
        if run.status != RunStatus.SUCCEEDED:
            raise SystemExit(f"run ended {run.status}: {run.status_reason}")
        window = Batch.objects.filter(stage_run__run=run, stage_run__key="infer", records_in__gt=0).aggregate(
            first=Min("started_at"), last=Max("finished_at")
        )
        infer_s = (window["last"] - window["first"]).total_seconds()
        # Without the final publish (a global stage the plain client has no counterpart for).
        to_infer_end = (window["last"] - run.started_at).total_seconds() if run.started_at else elapsed
        usage = TokenUsage.objects.filter(run_id=run.pk)
        return {
            "seconds": elapsed,
            "records_s": len(self.records) / elapsed,
            "infer_seconds": infer_s,
            "infer_records_s": len(self.records) / infer_s,
            "pre_publish_seconds": to_infer_end,
            "pre_publish_rs": len(self.records) / to_infer_end,
            "records_out": run.records_out,
            "usage_rows": usage.count(),
            "tokens": sum(u.prompt_tokens + u.completion_tokens for u in usage),
        }


def median_of(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=20_000)
    p.add_argument("--model", default="annotator")
    p.add_argument("--call-batch", type=int, default=64, help="records per gRPC call (ModelConfig.batch_size)")
    p.add_argument("--engine-batch", type=int, default=2000, help="records per engine batch (Pipeline.batch_size)")
    p.add_argument("--max-in-flight", type=int, default=4, help="ModelConfig.max_in_flight (per worker process)")
    p.add_argument("--workers", type=int, default=1, help="celery worker instances")
    p.add_argument("--concurrency", type=int, default=2, help="processes (or threads) per inference worker")
    p.add_argument("--pool", default="prefork", choices=["prefork", "threads", "solo"], help="inference worker pool")
    p.add_argument(
        "--no-split-queues",
        dest="split_queues",
        action="store_false",
        help="one worker for every queue instead of an inference worker plus a stages worker",
    )
    p.add_argument("--server-threads", type=int, default=32)
    p.add_argument("--server-latency-ms", type=float, default=0.0, help="added latency per call (a GPU-bound server)")
    p.add_argument("--database-url", default="")
    p.add_argument("--redis-url", default="")
    p.add_argument("--repeat", type=int, default=3, help="interleaved repetitions (medians are reported)")
    p.add_argument("--keep", action="store_true", help="keep the temp folder (logs, database)")
    args = p.parse_args()

    records = make_records(args.records)
    texts = [r["text"] for r in records]
    # max_in_flight bounds calls per process: a threads pool shares one bound across its batches.
    procs = args.workers * (args.concurrency if args.pool == "prefork" else 1)
    total_in_flight = procs * args.max_in_flight
    tmp = Path(tempfile.mkdtemp(prefix="df-inference-bench-"))
    server, address = start_server(args.server_threads, args.server_latency_ms)
    results: dict[str, list[dict]] = {"plain_1": [], "plain_n": [], "plain_p": [], "pipe": []}
    bench = None
    try:
        bench = PipelineBench(address, records, args, tmp)
        bench.start_workers()
        # Interleaved, so that load from elsewhere on the machine hits every side alike; medians reported.
        for n in range(args.repeat):
            results["plain_1"].append(plain_client(address, args.model, texts, args.call_batch, 1))
            results["plain_n"].append(plain_client(address, args.model, texts, args.call_batch, total_in_flight))
            results["plain_p"].append(
                plain_client_processes(address, args.model, texts, args.call_batch, args.max_in_flight, procs)
            )
            results["pipe"].append(bench.run(n))
    finally:
        if bench is not None:
            bench.stop_workers()
        server.terminate()
        server.wait(timeout=15)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"model={args.model} records={args.records} records/call={args.call_batch} "
        f"engine batch={args.engine_batch} inference workers={args.workers}x{args.concurrency} {args.pool}"
        f"{' + 1 stages worker' if args.split_queues else ' (all queues)'}, "
        f"max_in_flight={args.max_in_flight} (total {total_in_flight}); "
        f"db={'postgresql' if args.database_url else 'sqlite'} broker={'redis' if args.redis_url else 'sqlite'}; "
        f"cpus={os.cpu_count()}, load {os.getloadavg()[0]:.1f}; reference server process {address}"
        f"{f' (+{args.server_latency_ms:g} ms per call)' if args.server_latency_ms else ''}; "
        f"median of {args.repeat} interleaved runs"
    )
    plain_best = max(median_of(results["plain_n"], "records_s"), median_of(results["plain_p"], "records_s"))
    header = f"{'side':<48} {'seconds':>8} {'records/s':>10} {'vs best plain':>14}"
    print(header)
    print("-" * len(header))
    rows = [
        ("plain client, 1 in flight", results["plain_1"], "seconds", "records_s"),
        (f"plain client, 1 proc x {total_in_flight} in flight", results["plain_n"], "seconds", "records_s"),
        (f"plain client, {procs} procs x {args.max_in_flight} in flight", results["plain_p"], "seconds", "records_s"),
        ("pipeline end to end (run_start → succeeded)", results["pipe"], "seconds", "records_s"),
        ("pipeline before publish (start → last infer)", results["pipe"], "pre_publish_seconds", "pre_publish_rs"),
        ("pipeline inference stage (first → last batch)", results["pipe"], "infer_seconds", "infer_records_s"),
    ]
    for name, rs, secs, rate in rows:
        r = median_of(rs, rate)
        print(f"{name:<48} {median_of(rs, secs):>8.2f} {r:>10.0f} {r / plain_best:>14.0%}")
    last = results["pipe"][-1]
    print(f"records out {last['records_out']}, tokens_usage rows {last['usage_rows']}, tokens {last['tokens']}")
    ratio = median_of(results["pipe"], "records_s") / plain_best
    infer_ratio = median_of(results["pipe"], "infer_records_s") / plain_best
    print(
        f"orchestration overhead: the pipeline (end to end) reaches {ratio:.0%} of the best plain client's "
        f"records/s (goal >= 80%); its inference stage alone {infer_ratio:.0%}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
