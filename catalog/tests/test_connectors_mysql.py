"""MySQL/MariaDB connector on the machine's real MariaDB: table/query sources with resume, atomic table sink."""

import hashlib
import json

import pytest

from catalog.connectors import ConnectorError, DatasetRef, canonical_json, get_connector_for_kind

pytestmark = pytest.mark.integration

RECORDS = [{"id": i, "text": f"row {i} 'q' \"d\" ;\n", "score": i / 8} for i in range(41)]


@pytest.fixture
def my(mysql_db):
    config, execute = mysql_db
    return get_connector_for_kind("mysql", config), execute


@pytest.fixture
def loaded(my):
    conn, execute = my
    execute("CREATE TABLE src (id BIGINT PRIMARY KEY, text LONGTEXT, score DOUBLE)")
    execute("CREATE TABLE nokey (id BIGINT, text LONGTEXT, score DOUBLE)")
    for table in ("src", "nokey"):
        for r in RECORDS:
            execute(f"INSERT INTO {table} VALUES (%s, %s, %s)", (r["id"], r["text"], r["score"]))  # noqa: S608
    return conn


def _all(conn, ref, start=None, batch_size=6):
    return [r for chunk, _ in conn.read(ref, batch_size=batch_size, start=start) for r in chunk]


def test_it_connects_and_reports_the_server(my):
    conn, _ = my
    result = conn.test_connection()
    assert result.ok and result.detail.startswith(("MariaDB", "MySQL")), result.detail


def test_it_reports_an_unreachable_server(my):
    from conftest import free_port

    conn, _ = my
    bad = get_connector_for_kind("mysql", {**conn.config, "port": free_port(), "connect_timeout": 2})
    result = bad.test_connection()
    assert not result.ok and "Cannot connect" in result.detail


@pytest.mark.parametrize(
    "ref",
    [
        DatasetRef("src", "table"),  # resumes by the primary key
        DatasetRef("nokey", "table", {"key": "id"}),  # by the given key
        DatasetRef("SELECT * FROM nokey ORDER BY id", "query"),  # by offset
    ],
)
def test_sources_stream_and_resume_from_every_checkpoint(loaded, ref):
    conn = loaded
    assert _all(conn, ref) == RECORDS
    consumed = 0
    for records, checkpoint in conn.read(ref, batch_size=6):
        consumed += len(records)
        assert checkpoint["record"] == consumed
        assert _all(conn, ref, start=json.loads(json.dumps(checkpoint))) == RECORDS[consumed:]
    assert conn.count(ref) == len(RECORDS)
    assert [f["name"] for f in conn.infer_schema(ref)] == ["id", "text", "score"]


def test_a_keyed_read_resumes_by_key_while_rows_are_added(loaded, my):
    conn, execute = my
    ref = DatasetRef("src", "table")
    first = next(iter(conn.read(ref, batch_size=10)))[1]
    assert first == {"record": 10, "key": 9}
    execute("INSERT INTO src VALUES (-5, 'before the checkpoint', 0)")
    assert [r["id"] for r in _all(conn, ref, start=first)] == list(range(10, 41))


def test_stopping_after_one_chunk_does_not_fetch_the_rest(loaded, my):
    conn, execute = my
    execute("CREATE TABLE big (id BIGINT PRIMARY KEY, pad LONGTEXT)")
    execute("INSERT INTO big SELECT seq, REPEAT('x', 500) FROM seq_1_to_20000")  # MariaDB's sequence engine
    chunks = conn.read(DatasetRef("big", "table"), batch_size=5)
    records, checkpoint = next(chunks)
    chunks.close()  # the engine reads one chunk per batch: the connection is dropped, not drained
    assert [r["id"] for r in records] == [1, 2, 3, 4, 5] and checkpoint["key"] == 5
    assert conn.test_connection().ok


@pytest.mark.parametrize(
    "query",
    [
        "DELETE FROM src",
        "SELECT 1; DROP TABLE src",
        "SELECT * FROM src INTO OUTFILE '/tmp/x'",
        "WITH d AS (SELECT 1) UPDATE src SET text = 'x'",
    ],
)
def test_only_read_only_single_queries_run(loaded, my, query):
    conn, execute = my
    with pytest.raises(ConnectorError) as err:
        _all(conn, DatasetRef(query, "query"))
    assert err.value.field == "location"
    assert execute("SELECT count(*) FROM src")[0][0] == len(RECORDS)


@pytest.mark.parametrize("location", ["src; DROP TABLE x", "a.b.c", "`src`", "../src", "src--"])
def test_bad_table_names_are_refused(my, location):
    conn, _ = my
    with pytest.raises(ConnectorError) as err:
        conn.open_writer(location, "table")
    assert err.value.field == "location"


def test_sink_is_atomic_replaces_and_checksums(my):
    conn, execute = my
    w = conn.open_writer("out_t", "table")
    w.write(RECORDS[:20])
    w.write(RECORDS[20:])
    # Before commit the target does not exist for anyone else.
    assert execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'out_t' "
                   "AND table_schema = DATABASE()")[0][0] == 0  # fmt: skip
    result = w.commit()
    expected = hashlib.sha256("".join(canonical_json(r) + "\n" for r in RECORDS).encode()).hexdigest()
    assert result["records"] == len(RECORDS) and result["checksum"] == expected
    assert _all(conn, DatasetRef("out_t", "table", {"key": "id"})) == RECORDS
    # A retried publish replaces (no duplicates); an aborted one changes nothing.
    w = conn.open_writer("out_t", "table")
    w.write(RECORDS[:3])
    w.commit()
    assert execute("SELECT count(*) FROM out_t")[0][0] == 3
    w = conn.open_writer("out_t", "table")
    w.write(RECORDS)
    w.abort()
    assert execute("SELECT count(*) FROM out_t")[0][0] == 3
    # A failure in the middle of a load rolls everything back too.
    w = conn.open_writer("out_t", "table")
    w.write(RECORDS[:5])
    with pytest.raises(ConnectorError):
        w.write([{"id": 1, "unknown_column": 2}])
    assert w.closed and execute("SELECT count(*) FROM out_t")[0][0] == 3


def test_private_addresses_are_refused_unless_allowed(my, settings):
    conn, _ = my
    settings.ALLOWED_PRIVATE_HOSTS = []
    with pytest.raises(ConnectorError) as err:
        get_connector_for_kind("mysql", {**conn.config, "host": "127.0.0.1"})
    assert err.value.field == "host"
    named = get_connector_for_kind("mysql", {**conn.config, "host": "localhost"})
    result = named.test_connection()
    assert not result.ok and "ALLOWED_PRIVATE_HOSTS" in result.detail
