"""Chaos bench: random SIGKILLs of real workers during real 100k-record runs; counts what was lost.

Usage:
    .venv/bin/python bench/chaos_bench.py --backend pg --records 100000 --runs 2 --workers 2

Each run: read JSONL -> clean -> filter -> slow (sleeps per batch, so kills land mid-run) -> publish JSONL,
on `--workers` real `celery worker -P solo` processes. While the run is active, a random worker is
SIGKILLed (its whole process group; one that holds a lease at that moment) every 0.5-`--max-gap` s and
replaced at once; when the publish unit
starts, its holder is killed after a random 0-300 ms with probability `--publish-kill`. This process
runs the reaper pass every 0.5 s, as beat would. The lease is 2 s and the crash budget 50, so the run
must finish on its own. Bounded: `--max-seconds` per run, `--max-kills` per run.

Prints per run and in total: kills (of which during publish), batches redone (attempts beyond the first),
versions published for the run, BUILDING versions left, stray files in the sink folder, records lost and
records duplicated (published ids against the plain loop's output ids).
--backend pg uses BENCH_DATABASE_URL / BENCH_REDIS_URL like bench/engine_bench.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import engine_bench as eb  # noqa: E402

SLOW = {"seconds": 0.1}


def start_worker(env: dict, root: Path, name: str) -> subprocess.Popen:
    log = open(root / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
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
            f"{name}@%h",
            "-P",
            "solo",
            "-Q",
            "default,stages,inference",
            "--without-gossip",
            "--without-mingle",
            "-l",
            "WARNING",
        ],
        cwd=eb.BASE_DIR,
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=20)


def make_pipeline(root: Path, n: int, batch_size: int, tag: str):
    from catalog.models import Dataset, DataSource, Project
    from pipelines.models import Pipeline, PipelineStage

    project, _ = Project.objects.get_or_create(name="Chaos", defaults={"slug": "chaos"})
    source, _ = DataSource.objects.get_or_create(
        project=project, name="chaos-files", defaults={"kind": "file", "config": {"root": str(root / "files")}}
    )
    source.config = {"root": str(root / "files")}
    source.save()
    inp = Dataset.objects.create(
        project=project, source=source, name=f"in-{tag}", format="jsonl", location=f"in-{n}.jsonl"
    )
    out = Dataset.objects.create(
        project=project, source=source, name=f"out-{tag}", format="jsonl", location=f"out-{tag}/data.jsonl"
    )
    pipeline = Pipeline.objects.create(
        project=project, name=f"chaos-{tag}", input_dataset=inp, output_dataset=out, batch_size=batch_size
    )
    stages = [
        ("read", "read", {}),
        ("clean", "clean", eb.CLEAN),
        ("filter", "filter", eb.FILTER),
        ("slow", "test_slow", SLOW),
        ("publish", "publish", {}),
    ]
    for pos, (key, kind, config) in enumerate(stages):
        PipelineStage.objects.create(pipeline=pipeline, key=key, kind=kind, position=pos, config=config)
    return pipeline


def chaos_run(env, root, args, n, expected_ids, rng, index) -> dict:
    from django.db.models import F, Sum

    from catalog.models import DatasetVersion
    from tasks.choices import BatchStatus, RunStatus
    from tasks.models import Batch
    from tasks.services import reap, run_start

    tag = f"{index}-{int(time.time())}"
    pipeline = make_pipeline(root, n, args.batch_size, tag)
    procs = {f"chaos{index}-{i}": start_worker(env, root, f"chaos{index}-{i}") for i in range(args.workers)}
    spare = 0
    kills = publish_kills = 0
    publish_seen = False
    started = time.monotonic()
    run = run_start(pipeline=pipeline, actor=None)
    next_kill = time.monotonic() + rng.uniform(0.5, args.max_gap)
    next_reap = 0.0
    try:
        while True:
            now = time.monotonic()
            run.refresh_from_db()
            if run.status in RunStatus.terminal():
                break
            if now - started > args.max_seconds:
                raise SystemExit(f"run {run.pk} still {run.status} after {args.max_seconds}s; see {root}")
            if now >= next_reap:
                reap()
                next_reap = now + 0.5
            holder = (
                Batch.objects.filter(stage_run__run=run, stage_run__kind="publish", status=BatchStatus.RUNNING)
                .values_list("lease_owner", flat=True)
                .first()
            )
            target = None
            if holder and not publish_seen:
                publish_seen = True
                if rng.random() < args.publish_kill:
                    time.sleep(rng.uniform(0, 0.3))
                    target = next((k for k, p in procs.items() if holder.endswith(f":{p.pid}")), None)
                    publish_kills += target is not None
            if target is None and now >= next_kill and kills < args.max_kills:
                # A worker that holds a lease right now: a kill mid-batch, not of a worker still starting.
                owners = set(
                    Batch.objects.filter(stage_run__run=run, status=BatchStatus.RUNNING).values_list(
                        "lease_owner", flat=True
                    )
                )
                busy = sorted(k for k, p in procs.items() if any(o.endswith(f":{p.pid}") for o in owners))
                if busy:
                    target = rng.choice(busy)
                    next_kill = now + rng.uniform(0.5, args.max_gap)
            if target is not None:
                kill(procs.pop(target))
                kills += 1
                spare += 1
                name = f"chaos{index}-r{spare}"
                procs[name] = start_worker(env, root, name)
            time.sleep(0.05)
    finally:
        for p in procs.values():
            kill(p)
        from tasks.models import WorkerHeartbeat

        WorkerHeartbeat.objects.filter(name__startswith=f"chaos{index}-").delete()
    elapsed = time.monotonic() - started
    batches = Batch.objects.filter(stage_run__run=run)
    # Units redone: attempts beyond the first of batches that ran (a fused follower's row copies its head's).
    heads = batches.exclude(input_ref__has_key="fused_into")
    redone = heads.filter(attempt__gt=1).aggregate(n=Sum(F("attempt") - 1))["n"] or 0
    versions = DatasetVersion.objects.filter(run_id=run.pk)
    published_ids: list = []
    files = []
    out_dir = root / "files" / f"out-{tag}"
    if out_dir.exists():
        files = sorted(p.name for p in out_dir.iterdir())
    live = versions.filter(status="published").first()
    if live is not None:
        with open(root / "files" / live.location, encoding="utf-8") as fh:
            published_ids = [json.loads(line)["id"] for line in fh]
    stray = [f for f in files if live is None or f != Path(live.location).name]
    return {
        "run": str(run.pk),
        "status": run.status,
        "reason": run.status_reason,
        "seconds": elapsed,
        "kills": kills,
        "publish_kills": publish_kills,
        "redone": redone,
        "crashes": batches.aggregate(n=Sum("crashes"))["n"] or 0,
        "published": versions.filter(status="published").count(),
        "building": versions.filter(status="building").count(),
        "stray": stray,
        "lost": len(set(expected_ids) - set(published_ids)),
        "duplicated": len(published_ids) - len(set(published_ids)),
        "extra": len(set(published_ids) - set(expected_ids)),
        "records_out": len(published_ids),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=["pg", "embedded"], default="pg")
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--max-gap", type=float, default=3.0, help="most seconds between two random kills")
    parser.add_argument("--max-kills", type=int, default=40, help="random kills per run at most")
    parser.add_argument("--publish-kill", type=float, default=0.75, help="chance to kill the publish holder")
    parser.add_argument("--max-seconds", type=float, default=600)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--root", default="")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*")
    args = parser.parse_args()

    if args.worker:
        env = eb.bench_env(args.backend, Path(args.root))
        eb.setup_django(env)
        from dataflare_portal.celery import app, tune_embedded_transport
        from tasks.tests import kinds_for_tests

        kinds_for_tests.register()
        tune_embedded_transport()
        app.worker_main(args.rest)
        return

    root = Path(args.root or tempfile.mkdtemp(prefix="df-chaos-"))
    for d in ("data", "workspace", "files"):
        (root / d).mkdir(parents=True, exist_ok=True)
    env = eb.bench_env(args.backend, root)
    env["_backend"] = args.backend
    env["LOG_LEVEL"] = "WARNING"
    eb.setup_django(env)
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from dataflare_portal.celery import app, tune_embedded_transport
    from dataflare_portal.core.config import config_set
    from tasks import engine
    from tasks.tests import kinds_for_tests

    kinds_for_tests.register()
    tune_embedded_transport()
    with app.connection_for_write() as conn:
        for q in ("default", "stages", "inference"):
            try:
                conn.default_channel.queue_purge(q)
            except Exception as exc:
                print(f"(purge {q}: {exc})")
    for key, value in {
        "engine_lease_seconds": 2,
        "engine_resend_after_seconds": 3,
        "engine_crash_budget": 50,
        "worker_heartbeat_seconds": 0.5,
    }.items():
        config_set(key=key, value=value, actor=None)
    engine.engine_settings_forget()

    src = root / "files" / f"in-{args.records}.jsonl"
    eb.make_input(src, args.records)
    _s, _n = eb.plain_loop(src, root / "plain.jsonl", args.batch_size)
    with open(root / "plain.jsonl", encoding="utf-8") as fh:
        expected_ids = [json.loads(line)["id"] for line in fh]
    rng = random.Random(args.seed)
    results = []
    for i in range(args.runs):
        res = chaos_run(env, root, args, args.records, expected_ids, rng, i)
        results.append(res)
        print(json.dumps(res), flush=True)
    print()
    print(f"backend={args.backend} records={args.records:,} batch={args.batch_size} workers={args.workers}")
    keys = ["kills", "publish_kills", "redone", "crashes", "published", "building", "lost", "duplicated", "extra"]
    print(" | ".join(["run", "status", "seconds", *keys, "stray files"]))
    for i, r in enumerate(results):
        cells = [str(i), r["status"], f"{r['seconds']:.0f}", *(str(r[k]) for k in keys), str(len(r["stray"]))]
        print(" | ".join(cells))
    total = {k: sum(r[k] for r in results) for k in keys}
    print(" | ".join(["total", "", "", *(str(total[k]) for k in keys), str(sum(len(r["stray"]) for r in results))]))
    print(f"(workdir {root})")


if __name__ == "__main__":
    main()
