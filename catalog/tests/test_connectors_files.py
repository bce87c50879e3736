"""File connector: streaming reads with resume, schema/count/preview, traversal refusal, atomic writers."""

import csv
import hashlib
import json
import os
import subprocess
import sys
import textwrap

import pyarrow.parquet as pq
import pytest

from catalog.connectors import ConnectorError, DatasetRef, get_connector_for_kind, validate_config

RECORDS = [
    {"id": i, "text": f'line {i}\nsecond "quoted", line' if i % 3 == 0 else f"plain {i}", "ok": i % 2 == 0,
     "score": i / 4, "meta": {"tags": [i]}}
    for i in range(53)
]  # fmt: skip


@pytest.fixture
def conn(file_root):
    return get_connector_for_kind("file", {"root": str(file_root)})


def _write(conn, location, fmt, records=RECORDS, chunk=10):
    w = conn.open_writer(location, fmt)
    for i in range(0, len(records), chunk):
        w.write(records[i : i + chunk])
    return w.commit()


def _read_all(conn, ref, batch_size=7, start=None):
    return [r for chunk, _ in conn.read(ref, batch_size=batch_size, start=start) for r in chunk]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_it_resumes_from_any_checkpoint_to_the_same_records(conn, fmt):
    _write(conn, f"d/data.{fmt}", fmt)
    ref = DatasetRef(f"d/data.{fmt}", fmt)
    full = _read_all(conn, ref)
    assert len(full) == len(RECORDS)
    chunks = list(conn.read(ref, batch_size=7))
    assert all(len(c) <= 7 for c, _ in chunks)
    consumed = 0
    for records, checkpoint in chunks:
        consumed += len(records)
        assert checkpoint["record"] == consumed
        # json round-trip: checkpoints are stored as JSON by the engine
        assert _read_all(conn, ref, start=json.loads(json.dumps(checkpoint))) == full[consumed:]


def test_it_keeps_quoted_newlines_in_csv_across_chunks(conn, file_root):
    path = file_root / "q.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text"])
        for i in range(20):
            writer.writerow([i, f"a\nb\r\nc,{i}" if i % 2 else "x"])
    ref = DatasetRef("q.csv", "csv")
    first, cp = next(iter(conn.read(ref, batch_size=5)))
    rest = _read_all(conn, ref, batch_size=3, start=cp)
    assert [r["id"] for r in first + rest] == [str(i) for i in range(20)]
    assert rest[0]["text"] == "a\nb\r\nc,5"
    assert conn.count(ref) == 20


def test_it_round_trips_jsonl_and_parquet_exactly(conn):
    for fmt in ("jsonl", "parquet"):
        _write(conn, f"rt.{fmt}", fmt)
        assert _read_all(conn, DatasetRef(f"rt.{fmt}", fmt), batch_size=1000) == RECORDS


def test_it_reads_parquet_row_groups_with_resume_inside_a_group(conn, file_root, monkeypatch):
    from catalog.connectors.files import RecordEncoder

    monkeypatch.setattr(RecordEncoder, "PARQUET_ROW_GROUP", 20)
    _write(conn, "g.parquet", "parquet", chunk=20)
    assert pq.ParquetFile(file_root / "g.parquet").num_row_groups == 3
    ref = DatasetRef("g.parquet", "parquet")
    assert _read_all(conn, ref, start={"row_group": 1, "row_offset": 5, "record": 25}) == RECORDS[25:]


def test_it_infers_schema_counts_and_previews(conn):
    _write(conn, "s.csv", "csv")
    ref = DatasetRef("s.csv", "csv")
    schema = {f["name"]: f["type"] for f in conn.infer_schema(ref)}
    assert schema == {"id": "int", "text": "string", "ok": "bool", "score": "float", "meta": "json"}
    assert conn.count(ref) == 53
    assert [r["id"] for r in conn.preview(ref, limit=4)] == ["0", "1", "2", "3"]
    _write(conn, "s.jsonl", "jsonl", records=[{"a": 1}, {"a": None, "b": "x"}])
    assert conn.infer_schema(DatasetRef("s.jsonl", "jsonl")) == [
        {"name": "a", "type": "int", "nullable": True},
        {"name": "b", "type": "string", "nullable": True},
    ]


def test_it_names_the_line_of_bad_jsonl(conn, file_root):
    (file_root / "bad.jsonl").write_text('{"a": 1}\n{oops\n')
    with pytest.raises(ConnectorError, match="Record 2"):
        _read_all(conn, DatasetRef("bad.jsonl", "jsonl"))


@pytest.mark.parametrize("location", ["../outside.jsonl", "/etc/passwd", "a/../../b.jsonl", "a/../.."])
def test_it_refuses_paths_that_escape_the_root(conn, location):
    with pytest.raises(ConnectorError) as err:
        conn.open_writer(location, "jsonl")
    assert err.value.field == "location"
    with pytest.raises(ConnectorError):
        list(conn.read(DatasetRef(location, "jsonl")))


def test_it_refuses_symlinks_that_escape_the_root(conn, file_root, tmp_path):
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "x.jsonl").write_text('{"a": 1}\n')
    os.symlink(outside, file_root / "link")
    with pytest.raises(ConnectorError, match="escapes"):
        conn.read(DatasetRef("link/x.jsonl", "jsonl"))
    with pytest.raises(ConnectorError, match="escapes"):
        conn.open_writer("link/new.jsonl", "jsonl")
    # A symlink that stays inside the root is fine.
    (file_root / "real").mkdir()
    (file_root / "real" / "y.jsonl").write_text('{"b": 2}\n')
    os.symlink(file_root / "real", file_root / "inside")
    assert _read_all(conn, DatasetRef("inside/y.jsonl", "jsonl")) == [{"b": 2}]


def test_a_sibling_folder_whose_name_starts_with_the_root_is_outside_it(conn, file_root):
    """Containment is by path components, not by string prefix: `files-evil` is not inside `files`."""
    evil = file_root.parent / (file_root.name + "-evil")
    evil.mkdir()
    (evil / "x.jsonl").write_text('{"stolen": 1}\n')
    location = f"../{evil.name}/x.jsonl"
    with pytest.raises(ConnectorError, match="escapes") as err:
        _read_all(conn, DatasetRef(location, "jsonl"))
    assert err.value.field == "location"
    with pytest.raises(ConnectorError, match="escapes") as err:
        conn.open_writer(f"../{evil.name}/new.jsonl", "jsonl")
    assert err.value.field == "location"
    assert sorted(p.name for p in evil.iterdir()) == ["x.jsonl"]
    # The same through a symlink inside the root that points at the sibling.
    os.symlink(evil, file_root / "to-evil")
    with pytest.raises(ConnectorError, match="escapes"):
        _read_all(conn, DatasetRef("to-evil/x.jsonl", "jsonl"))
    with pytest.raises(ConnectorError, match="escapes"):
        conn.open_writer("to-evil/new.jsonl", "jsonl")
    assert sorted(p.name for p in evil.iterdir()) == ["x.jsonl"]
    with pytest.raises(ConnectorError) as err:
        conn.open_writer(f"../{evil.name}/new.jsonl", "jsonl")
    assert str(err.value) == f"Path '../{evil.name}/new.jsonl' escapes the data source root."
    # A data source rooted at the sibling is refused too.
    for root in (str(evil), f"../{evil.name}"):
        with pytest.raises(ConnectorError) as err:
            validate_config("file", {"root": root})
        assert err.value.field == "root"
        assert str(err.value) == f"Root {root!r} is outside the allowed file roots ({file_root.resolve()})."


@pytest.mark.parametrize("bad", ["", "   ", "data\x00.jsonl"])
def test_it_refuses_an_empty_or_nul_root_or_location_and_names_the_field(conn, bad):
    from catalog.connectors.files import resolve_root

    with pytest.raises(ConnectorError, match=r"^A root folder is required\.$") as err:
        resolve_root(bad)
    assert err.value.field == "root"
    with pytest.raises(ConnectorError, match=r"^A file path is required\.$") as err:
        conn.open_writer(bad, "jsonl")
    assert err.value.field == "location"
    with pytest.raises(ConnectorError, match=r"^A file path is required\.$") as err:
        _read_all(conn, DatasetRef(bad, "jsonl"))
    assert err.value.field == "location"


def test_it_refuses_every_root_when_no_file_roots_are_configured(settings):
    from catalog.connectors.files import resolve_root

    settings.FILE_ROOTS = []
    with pytest.raises(ConnectorError) as err:
        resolve_root("/data")
    assert (str(err.value), err.value.field) == ("No file roots are configured (FILE_ROOTS).", "root")


def test_it_refuses_a_root_outside_file_roots(file_root, tmp_path):
    with pytest.raises(ConnectorError) as err:
        validate_config("file", {"root": str(tmp_path / "elsewhere")})
    assert err.value.field == "root"
    with pytest.raises(ConnectorError) as err:
        validate_config("file", {"root": "../.."})
    assert err.value.field == "root"
    with pytest.raises(ConnectorError) as err:
        validate_config("file", {})
    assert err.value.field == "root"
    assert validate_config("file", {"root": "sub"}) == {"root": "sub"}


def test_a_refused_root_lists_every_allowed_root(settings, file_root, tmp_path):
    from catalog.connectors.files import resolve_root

    second = tmp_path / "second-root"
    second.mkdir()
    settings.FILE_ROOTS = [file_root, second]
    assert resolve_root(str(second / "x")) == (second / "x").resolve()
    with pytest.raises(ConnectorError) as err:
        resolve_root(str(tmp_path / "elsewhere"))
    assert str(err.value) == (
        f"Root {str(tmp_path / 'elsewhere')!r} is outside the allowed file roots "
        f"({file_root.resolve()}, {second.resolve()})."
    )


def test_it_refuses_unknown_kinds_and_formats(conn):
    with pytest.raises(ConnectorError) as err:
        get_connector_for_kind("hdfs", {})
    assert err.value.field == "kind"
    with pytest.raises(ConnectorError) as err:
        conn.open_writer("x.xml", "xml")
    assert err.value.field == "format"


def test_writer_commit_is_atomic_and_checksums_the_bytes(conn, file_root):
    w = conn.open_writer("out/v1.jsonl", "jsonl")
    w.write(RECORDS[:5])
    assert not (file_root / "out" / "v1.jsonl").exists()
    result = w.commit()
    data = (file_root / "out" / "v1.jsonl").read_bytes()
    assert result == {
        "location": "out/v1.jsonl",
        "checksum": hashlib.sha256(data).hexdigest(),
        "records": 5,
        "size_bytes": len(data),
    }
    assert os.listdir(file_root / "out") == ["v1.jsonl"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_writer_abort_leaves_nothing(conn, file_root, fmt):
    with pytest.raises(RuntimeError), conn.open_writer(f"ab.{fmt}", fmt) as w:
        w.write(RECORDS)
        raise RuntimeError("boom")
    assert os.listdir(file_root) == []
    w = conn.open_writer(f"ab.{fmt}", fmt)
    w.write(RECORDS)
    w.abort()
    assert os.listdir(file_root) == []


def test_a_crash_before_commit_leaves_no_visible_file(file_root):
    script = textwrap.dedent(
        f"""
        import os, django
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dataflare_portal.settings")
        django.setup()
        from django.conf import settings
        from pathlib import Path
        settings.FILE_ROOTS = [Path({str(file_root)!r})]
        from catalog.connectors import get_connector_for_kind
        w = get_connector_for_kind("file", {{"root": {str(file_root)!r}}}).open_writer("c.jsonl", "jsonl")
        w.write([{{"i": i}} for i in range(1000)])
        os._exit(9)  # dies without commit or abort, like a SIGKILL
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=os.getcwd(), capture_output=True, timeout=60)
    assert proc.returncode == 9, proc.stderr.decode()[-2000:]
    assert not (file_root / "c.jsonl").exists()
    # Only a hidden temp file may remain; it is never a dataset location.
    assert all(name.startswith(".c.jsonl.") and name.endswith(".tmp") for name in os.listdir(file_root))


def test_csv_writer_refuses_fields_outside_the_header(conn, file_root):
    w = conn.open_writer("h.csv", "csv", fields=["a"])
    with pytest.raises(ConnectorError, match="not in the CSV header"):
        w.write([{"a": 1, "b": 2}])
    w.abort()
    assert not (file_root / "h.csv").exists()


def test_test_connection_reports_missing_and_present_roots(conn, file_root):
    assert conn.test_connection().ok
    missing = get_connector_for_kind("file", {"root": str(file_root / "nope")})
    result = missing.test_connection()
    assert not result.ok and "does not exist" in result.detail


def test_resume_refuses_a_file_replaced_since_the_checkpoint(conn):
    _write(conn, "r.jsonl", "jsonl")
    ref = DatasetRef("r.jsonl", "jsonl")
    _records, checkpoint = next(iter(conn.read(ref, batch_size=5)))
    _write(conn, "r.jsonl", "jsonl", records=RECORDS[::-1])
    with pytest.raises(ConnectorError, match="changed since the checkpoint"):
        conn.read(ref, start=checkpoint)


@pytest.mark.parametrize("batch_size", [1, 7, 53, 60])
def test_a_jsonl_read_plan_starts_every_chunk_where_reading_in_sequence_does(conn, file_root, batch_size):
    # Blank lines between records, a blank tail and no final newline: the plan counts records as the reader does.
    lines = [json.dumps(r, ensure_ascii=False) for r in RECORDS]
    text = "\n".join(line + ("\n\n" if i % 9 == 0 else "") for i, line in enumerate(lines)) + "\n  \n"
    (file_root / "plan.jsonl").write_text(text.rstrip("\n ").rstrip() if batch_size == 7 else text, encoding="utf-8")
    ref = DatasetRef("plan.jsonl", "jsonl")
    in_sequence = list(conn.read(ref, batch_size=batch_size))
    plan = conn.plan_reads(ref, batch_size=batch_size)
    assert plan == [checkpoint for _records, checkpoint in in_sequence[:-1]]  # one start per chunk after the first
    for start, (records, _cp) in zip([None, *plan], in_sequence, strict=True):
        assert next(iter(conn.read(ref, batch_size=batch_size, start=start)))[0] == records


@pytest.mark.parametrize(("first", "size"), [(5, 7), (13, 4), (59, 10), (60, 10)])
def test_a_plan_after_a_first_chunk_starts_there_and_splits_the_rest(conn, file_root, first, size):
    lines = [json.dumps(r, ensure_ascii=False) for r in RECORDS]
    text = "\n".join(line + ("\n\n" if i % 9 == 0 else "") for i, line in enumerate(lines)) + "\n  \n"
    (file_root / "after.jsonl").write_text(text, encoding="utf-8")
    ref = DatasetRef("after.jsonl", "jsonl")
    assert conn.can_plan_reads(ref) and not conn.can_plan_reads(DatasetRef("after.csv", "csv"))
    head, after = next(iter(conn.read(ref, batch_size=first)))
    plan = conn.plan_reads(ref, batch_size=size, after=after)
    rest = list(conn.read(ref, batch_size=size, start=after)) if len(head) < len(RECORDS) else []
    assert plan == [after, *(cp for _r, cp in rest[:-1])][: len(rest)]
    chunks = [next(iter(conn.read(ref, batch_size=size, start=start)))[0] for start in plan]
    assert head + [r for c in chunks for r in c] == [json.loads(line) for line in lines]
    assert all(len(c) == size for c in chunks[:-1])


def test_only_jsonl_is_planned(conn):
    for fmt in ("csv", "parquet"):
        _write(conn, f"np/data.{fmt}", fmt)
        assert conn.plan_reads(DatasetRef(f"np/data.{fmt}", fmt), batch_size=5) is None
    (conn.path("np/empty.jsonl")).write_text("", encoding="utf-8")
    assert conn.plan_reads(DatasetRef("np/empty.jsonl", "jsonl"), batch_size=5) == []


def test_a_plan_with_too_many_chunks_is_refused_early(conn, file_root):
    (file_root / "many.jsonl").write_text("".join(f'{{"id": {i}}}\n' for i in range(100)), encoding="utf-8")
    ref = DatasetRef("many.jsonl", "jsonl")
    assert len(conn.plan_reads(ref, batch_size=10, max_chunks=10)) == 9  # 10 chunks: 9 starts after the first
    assert conn.plan_reads(ref, batch_size=10, max_chunks=9) is None
    assert conn.plan_reads(ref, batch_size=9, max_chunks=10) is None  # 12 chunks
