"""A worker's memory follows the batch, not the input: the partitioned dedup's reduce and write steps and the
raw reader publish uses (issue 14: worker peak RSS flat from 100k to 1M records).

Each memory test runs the real function over an input many times larger than its bound and measures the
Python heap's peak with tracemalloc (allocation sizes, no timing): it fails if the step holds the whole
partition, group or file again, as it did before (a reduce's set of every key of its partition; a write
group accumulated in a bytearray; publish reading each write batch's file whole).
"""

from __future__ import annotations

import hashlib
import tracemalloc
from pathlib import Path

import pytest

from dataflare_portal.core import jsonl
from pipelines.stagekinds import StageContext, registry
from tasks import partition, workspace

DEDUP = registry.get("dedup")
CTX = StageContext(config={"fields": ["text"]}, stage_key="dedup")


def _peak(fn, *args, **kwargs):
    """(result, peak bytes of Python allocations while fn ran)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        result = fn(*args, **kwargs)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    return result, peak


def _key_folders(tmp_path: Path, parts: int, per_part: int, partitions: int = 1, dup_every: int = 0) -> list[Path]:
    """Key folders as chunk units write them: `parts` parts of `per_part` keys (sha256 digests, as dedup's);
    with `dup_every`, every such key repeats an earlier one (of this or an earlier part)."""
    folders = []
    n = 0
    for u in range(parts):
        entries: list[list[tuple[int, bytes]]] = [[] for _ in range(partitions)]
        for position in range(per_part):
            source = n // 2 if dup_every and n % dup_every == 0 else n
            key = hashlib.sha256(str(source).encode()).digest()
            entries[partition.partition_of(key, partitions)].append((position, key))
            n += 1
        folder = tmp_path / "keys" / f"{u}.1.keys"
        partition.keys_write(folder, entries)
        folders.append(folder)
    return folders


def _drops(path: Path, groups: int) -> list[list[int]]:
    return [partition.drops_read(path, g) for g in range(groups)]


@pytest.mark.parametrize("partitions", [1, 3])
def test_a_reduce_split_into_buckets_drops_exactly_what_one_pass_drops(tmp_path, partitions):
    folders = _key_folders(tmp_path, parts=12, per_part=300, partitions=partitions, dup_every=5)
    out = tmp_path / "drops"
    total = 0
    for p in range(partitions):
        n_one = partition.reduce_partition_to(out / f"one{p}", DEDUP, CTX, folders, p)
        # 512 bytes of entries per bucket: the partition goes through dozens of buckets (spill files).
        n_many = partition.reduce_partition_to(out / f"many{p}", DEDUP, CTX, folders, p, bucket_bytes=512)
        assert n_one == n_many > 0
        assert _drops(out / f"one{p}", len(folders)) == _drops(out / f"many{p}", len(folders))
        total += n_many
    assert total == 360  # every 5th key repeats key n // 2, which is earlier unless itself such a repeat
    assert sorted(x.name for x in out.iterdir()) == sorted(
        [*(f"one{p}" for p in range(partitions)), *(f"many{p}" for p in range(partitions))]
    )  # the spill folders are gone


def test_the_first_occurrence_wins_in_a_bucketed_reduce_across_parts(tmp_path):
    chunks = [
        [{"id": 0, "text": "alpha"}, {"id": 1, "text": "beta"}],
        [{"id": 2, "text": "Gamma  Delta"}, {"id": 3, "text": "gamma delta"}],
        [{"id": 4, "text": "ＧＡＭＭＡ delta"}, {"id": 5, "text": "alpha"}, {"id": 6, "text": "epsilon"}],
        [{"id": 7, "text": "beta"}, {"id": 8, "text": "zeta"}],
    ]
    folders = []
    for u, chunk in enumerate(chunks):
        folder = tmp_path / f"{u}.keys"
        partition.keys_write(folder, [list(enumerate(DEDUP.record_keys(chunk, CTX)))])
        folders.append(folder)
    path = tmp_path / "r0.drops"
    assert partition.reduce_partition_to(path, DEDUP, CTX, folders, 0, bucket_bytes=1) == 4
    assert _drops(path, 4) == [[], [1], [0, 1], [0]]  # ids 3, 4, 5 and 7: later copies of 2, 2, 0 and 1


def test_a_reduces_memory_follows_its_bucket_not_the_input(tmp_path):
    # 120 parts of 1000 distinct keys in one partition (about 4.6 MB of entries), buckets of 128 KiB.
    folders = _key_folders(tmp_path, parts=120, per_part=1000)
    budget = 128 * 1024
    count, peak = _peak(
        partition.reduce_partition_to, tmp_path / "r.drops", DEDUP, CTX, folders, 0, bucket_bytes=budget
    )
    assert count == 0
    # A bucket's set (about 3x its entry bytes), its bytes, one part's key file and the spill buffers; the
    # one-pass reduce held a set of all 120,000 keys (about 14 MB) here.
    assert peak < 8 * budget, peak
    _count, one_pass = _peak(
        partition.reduce_partition_to, tmp_path / "r1.drops", DEDUP, CTX, folders, 0, bucket_bytes=1 << 40
    )
    assert one_pass > 8 * budget  # the bound above is one that holding the partition breaks


def _write_inputs(tmp_path: Path, parts: int, per_part: int):
    """Workspace parts of `per_part` records (about 150 bytes a line), their keys folders and one drops file."""
    units = []
    for u in range(parts):
        records = [{"id": u * per_part + i, "text": f"record {u}-{i} " + "x" * 120} for i in range(per_part)]
        path = Path(workspace.root()) / "in" / f"{u}.1.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jsonl.dumps_lines(records))
        partition.keys_write(path.with_suffix(".keys"), [list(enumerate(DEDUP.record_keys(records, CTX)))])
        ref = workspace.relative(path)
        units.append({"index": u, "parts": [ref], "keys": partition.keys_dir(ref)})
    drops = Path(workspace.root()) / "r0.1.drops"
    partition.drops_write(drops, parts, {u: [0, 3] for u in range(parts)})
    return units, [drops]


def test_a_write_batch_streams_its_group_instead_of_holding_it(tmp_path, settings):
    settings.WORKSPACE_DIR = str(tmp_path / "ws")
    units, drops = _write_inputs(tmp_path, parts=60, per_part=400)  # about 3.6 MB of JSON lines in the group
    total = sum(workspace.resolve(u["parts"][0]).stat().st_size for u in units)
    out = tmp_path / "ws" / "out" / "0.1.jsonl"
    (seen, kept), peak = _peak(partition.write_group_to, out, units, drops)
    assert (seen, kept) == (60 * 400, 60 * 398)
    assert out.read_bytes().count(b"\n") == kept
    # One part's lines (split and filtered) at a time; the group was held whole (plus a copy) before.
    assert peak < total / 8, (peak, total)


def test_raw_reads_a_file_in_blocks_of_whole_lines(tmp_path, settings):
    settings.WORKSPACE_DIR = str(tmp_path)
    lines = [jsonl.dumps_lines([{"id": i, "text": "y" * (i % 700)}]) for i in range(4000)]
    lines[1234] = jsonl.dumps_lines([{"id": 1234, "text": "z" * 50_000}])  # one line longer than a block
    data = b"".join(lines)
    (tmp_path / "a.jsonl").write_bytes(data)
    (tmp_path / "empty.jsonl").write_bytes(b"")
    parts = workspace.Parts(["empty.jsonl", "a.jsonl"])
    blocks = list(parts.raw(block_bytes=16 * 1024))
    assert blocks[0] == (b"", 0)  # an empty file still yields its (empty) block
    assert len(blocks) > 20
    assert b"".join(b for b, _ in blocks) == data
    assert all(b.endswith(b"\n") and n == b.count(b"\n") for b, n in blocks[1:])
    assert max(len(b) for b, _ in blocks) < 16 * 1024 + 51_000
    assert parts.records == 4000
    (tmp_path / "torn.jsonl").write_bytes(data + b'{"id": 1')
    with pytest.raises(ValueError, match="does not end with a newline"):
        list(workspace.Parts(["torn.jsonl"]).raw(block_bytes=16 * 1024))


def test_raw_memory_follows_the_block_not_the_file(tmp_path, settings):
    # Publish copies the run's output through Parts.raw(): a write batch's file is a fraction of the whole
    # output, so reading it whole grew the publishing worker with the input.
    settings.WORKSPACE_DIR = str(tmp_path)
    line = jsonl.dumps_lines([{"text": "w" * 200}])
    (tmp_path / "big.jsonl").write_bytes(line * 40_000)  # about 8.5 MB
    size = (tmp_path / "big.jsonl").stat().st_size

    def consume():
        return sum(n for _b, n in workspace.Parts(["big.jsonl"]).raw(block_bytes=256 * 1024))

    count, peak = _peak(consume)
    assert count == 40_000
    assert peak < 4 * 256 * 1024 < size / 8, (peak, size)


def test_a_keys_folder_written_part_by_part_reads_as_one_written_at_once(tmp_path):
    tmp_path = tmp_path / "keys"
    tmp_path.mkdir()
    # A map batch adds its group's keys part by part (it held the whole group's keys before).
    parts = [[[(0, b"a"), (2, b"c")], [(1, b"b")]], [[], [(3, b"dd")]], [[(4, b"e" * 40)], []]]
    writer = partition.KeysWriter(tmp_path / "m0.1", 2)
    for entries in parts:
        writer.add(entries)
    assert not (tmp_path / "m0.1").exists()  # nothing in place before commit
    writer.commit()
    partition.keys_write(tmp_path / "whole", [[e for part in parts for e in part[p]] for p in range(2)])
    for p in range(2):
        assert list(partition.keys_read(tmp_path / "m0.1", p)) == list(partition.keys_read(tmp_path / "whole", p))
    assert partition.keys_count(tmp_path / "m0.1", 2) == 5
    aborted = partition.KeysWriter(tmp_path / "m1.1", 2)
    aborted.add(parts[0])
    aborted.abort()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m0.1", "whole"]
