"""Profile one engine worker in-process: where does a batch's time go?

Runs the bench pipeline (read JSONL -> clean -> filter -> publish JSONL) with the broker replaced by an
in-process queue, so one process claims, processes and commits every batch in turn (no broker hop: this
measures the engine's own per-batch cost, not Celery's). Prints wall time, SQL statements and SQL time per
batch, and optionally a profile.

Usage:
    .venv/bin/python bench/profile_engine.py --backend pg --records 100000 [--profile cprofile|pyinstrument]

--backend pg uses BENCH_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/df_engine); embedded uses a
SQLite file in a temp folder. pyinstrument is not a project dependency: put it on PYTHONPATH to use it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

from bench.engine_bench import CLEAN, FILTER, bench_env, make_input, setup_django  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=["pg", "embedded"], default="pg")
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--profile", choices=["none", "cprofile", "pyinstrument"], default="none")
    parser.add_argument("--out", default="", help="write the profile here (pstats file or pyinstrument text)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="df-prof-"))
    for d in ("data", "workspace", "files"):
        (root / d).mkdir(parents=True, exist_ok=True)
    env = bench_env(args.backend, root)
    setup_django(env)
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)

    from catalog.models import Dataset, DataSource, Project
    from pipelines.models import Pipeline, PipelineStage
    from tasks import engine
    from tasks.services import run_start

    sent: list = []
    engine.dispatch = sent.extend
    engine.dispatch_on_commit = sent.extend

    src = root / "files" / f"in-{args.records}.jsonl"
    make_input(src, args.records)
    tag = f"prof-{int(time.time())}"
    project, _ = Project.objects.get_or_create(name="Bench", defaults={"slug": "bench"})
    source = DataSource.objects.create(project=project, name=tag, kind="file", config={"root": str(root / "files")})
    inp = Dataset.objects.create(project=project, source=source, name=f"in-{tag}", format="jsonl", location=src.name)
    out = Dataset.objects.create(
        project=project, source=source, name=f"out-{tag}", format="jsonl", location=f"out/{tag}.jsonl"
    )
    pipeline = Pipeline.objects.create(
        project=project, name=tag, input_dataset=inp, output_dataset=out, batch_size=args.batch_size
    )
    for pos, (key, kind, config) in enumerate(
        [("read", "read", {}), ("clean", "clean", CLEAN), ("filter", "filter", FILTER), ("publish", "publish", {})]
    ):
        PipelineStage.objects.create(pipeline=pipeline, key=key, kind=kind, position=pos, config=config)

    sql = {"n": 0, "s": 0.0}

    def timed(execute, sql_text, params, many, context):
        t0 = time.perf_counter()
        try:
            return execute(sql_text, params, many, context)
        finally:
            sql["s"] += time.perf_counter() - t0
            sql["n"] += 1

    run = run_start(pipeline=pipeline, actor=None)
    profiler = None
    if args.profile == "cprofile":
        import cProfile

        profiler = cProfile.Profile()
    elif args.profile == "pyinstrument":
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005)
    batches = 0
    started = time.perf_counter()
    cpu0 = time.process_time()
    with connection.execute_wrapper(timed):
        if profiler is not None:
            profiler.enable() if args.profile == "cprofile" else profiler.start()
        while sent:
            batch_id, _queue, _global = sent.pop(0)
            engine.batch_execute(batch_id=batch_id, owner="prof:1")
            batches += 1
        if profiler is not None:
            profiler.disable() if args.profile == "cprofile" else profiler.stop()
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    run.refresh_from_db()
    load = os.getloadavg()
    print(f"backend={args.backend} records={args.records} batch={args.batch_size} run={run.status}")
    print(f"records out {run.records_out}; units executed {batches}; load average {load[0]:.2f} {load[1]:.2f}")
    print(
        f"wall {wall:.2f} s = {wall / max(1, batches) * 1000:.1f} ms per unit; "
        f"SQL {sql['n']} statements ({sql['n'] / max(1, batches):.1f} per unit), "
        f"{sql['s']:.2f} s ({sql['s'] / max(1, batches) * 1000:.1f} ms per unit)"
    )
    # On a shared machine wall time swings with load; this process's CPU time much less (the database's
    # own CPU is not in it).
    print(f"worker process CPU {cpu:.2f} s = {cpu / max(1, batches) * 1000:.1f} ms per unit")
    if profiler is not None:
        if args.profile == "cprofile":
            import pstats

            if args.out:
                profiler.dump_stats(args.out)
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(45)
        else:
            text = profiler.output_text(unicode=False, color=False, show_all=False)
            if args.out:
                Path(args.out).write_text(text)
            print(text)


if __name__ == "__main__":
    main()
