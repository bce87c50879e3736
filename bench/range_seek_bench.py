"""Record-range start: how long finding record N takes, by the JSONL line scan and by reading up to it.

Usage:
    .venv/bin/python bench/range_seek_bench.py --records 1000000 --at 900000 --rounds 3

A backfill over records first..last starts its first read at the checkpoint where record `first` begins
(tasks/engine.py `_seek`): JSONL files scan for line ends and Parquet files count their row groups' rows
(FileConnector.seek_record); CSV (and JSONL and Parquet with those switched off) read the records before it
through the connector, SEEK_CHUNK at a time.
Writes one file per format to a temp folder, then prints the median (min-max) seconds of each way and the
load average. No database: the connector and the engine's read-through loop are called directly.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--at", type=int, default=900_000, help="0-based index of the record to find")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="df-seek-"))
    os.environ.setdefault("DATA_DIR", str(tmp / "data"))
    os.environ["FILE_ROOTS"] = str(tmp)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dataflare_portal.settings")
    import django

    django.setup()
    import pyarrow as pa
    import pyarrow.parquet as pq

    from catalog.connectors.files import FileConnector
    from tasks import engine

    rows = [{"id": i, "text": f"record {i} " + "lorem ipsum " * (i % 7)} for i in range(args.records)]
    with open(tmp / "in.jsonl", "w") as fh:
        for r in rows:
            fh.write(f'{{"id": {r["id"]}, "text": "{r["text"]}"}}\n')
    with open(tmp / "in.csv", "w") as fh:
        fh.write("id,text\n")
        for r in rows:
            fh.write(f"{r['id']},{r['text']}\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp / "in.parquet", row_group_size=100_000)
    del rows
    conn = FileConnector({"root": str(tmp)})

    class Scanless(FileConnector):
        seek_record = None

    def via(connector, fmt):
        spec = engine.RunSpec(
            run_id="bench",
            project_id=0,
            pipeline_id=0,
            batch_size=1000,
            max_attempts=1,
            input_dataset_id=None,
            output_dataset_id=None,
        )
        spec.cache["reader"] = ({"location": f"in.{fmt}", "format": fmt}, connector)
        return spec

    ways = [
        ("jsonl, line scan", via(conn, "jsonl")),
        ("jsonl, read through", via(Scanless({"root": str(tmp)}), "jsonl")),
        ("csv, read through", via(conn, "csv")),
        ("parquet, row groups", via(conn, "parquet")),
        ("parquet, read through", via(Scanless({"root": str(tmp)}), "parquet")),
    ]
    results = {name: [] for name, _spec in ways}
    for _round in range(args.rounds):
        for name, spec in ways:
            started = time.perf_counter()
            checkpoint = engine._seek(spec, args.at)
            results[name].append(time.perf_counter() - started)
            assert checkpoint["record"] == args.at, (name, checkpoint)
            first = next(spec.cache["reader"][1].read(spec.cache["reader"][0], batch_size=1, start=checkpoint))
            assert int(first[0][0]["id"]) == args.at, (name, first[0][0])
    load = os.getloadavg()
    print(f"find record {args.at:,} of {args.records:,}; {args.rounds} rounds; load {load[0]:.2f} {load[1]:.2f}")
    print(f"{'way':<24} {'median s':>9} {'min-max s':>14}")
    for name, times in results.items():
        print(f"{name:<24} {statistics.median(times):>9.3f} {min(times):>6.3f}-{max(times):.3f}")


if __name__ == "__main__":
    main()
