"""PostgreSQL connector on the real server: table/query sources with resume, COPY sink, SSRF guard."""

import hashlib
import json
import socket

import pytest

from catalog.connectors import ConnectorError, DatasetRef, canonical_json, get_connector_for_kind
from catalog.connectors.postgres import split_statements_check

pytestmark = pytest.mark.integration

RECORDS = [
    {"id": i, "text": f'row {i}\t"tab"\n;', "score": i / 8, "ok": i % 2 == 0, "meta": {"k": [i, None]}}
    for i in range(41)
]


@pytest.fixture
def conn(pg_config):
    return get_connector_for_kind("postgresql", pg_config)


@pytest.fixture
def loaded(conn, pg_exec):
    pg_exec("DROP TABLE IF EXISTS src")
    w = conn.open_writer("public.src", "table")
    w.write(RECORDS[:20])
    w.write(RECORDS[20:])
    w.commit()
    return DatasetRef("src", "table")


def _all(conn, ref, start=None, batch_size=6):
    return [r for chunk, _ in conn.read(ref, batch_size=batch_size, start=start) for r in chunk]


def test_it_connects_and_reports_the_version(conn):
    result = conn.test_connection()
    assert result.ok and result.detail.startswith("PostgreSQL")


def test_it_reports_an_unreachable_server_quickly(pg_config):
    from conftest import free_port

    bad = get_connector_for_kind("postgresql", {**pg_config, "port": free_port(), "connect_timeout": 2})
    result = bad.test_connection()
    assert not result.ok and "Cannot connect" in result.detail


def test_table_source_resumes_by_ctid_and_by_key(conn, loaded):
    assert _all(conn, loaded) == RECORDS
    for ref in (loaded, DatasetRef("public.src", "table", {"key": "id"})):
        consumed = 0
        for records, checkpoint in conn.read(ref, batch_size=6):
            consumed += len(records)
            assert checkpoint["record"] == consumed
            assert _all(conn, ref, start=json.loads(json.dumps(checkpoint))) == RECORDS[consumed:]


def test_query_source_runs_read_only_and_resumes(conn, loaded, pg_exec):
    ref = DatasetRef("SELECT id, text FROM src WHERE id < 30 ORDER BY id -- comment; still one statement\n;", "query")
    rows = _all(conn, ref)
    assert [r["id"] for r in rows] == list(range(30))
    assert _all(conn, ref, start={"record": 12}) == rows[12:]
    assert conn.count(ref) == 30
    # A data-modifying CTE passes the prefix check but the READ ONLY transaction stops it.
    sneaky = DatasetRef("WITH d AS (DELETE FROM src RETURNING *) SELECT * FROM d", "query")
    with pytest.raises(ConnectorError):
        _all(conn, sneaky)
    assert pg_exec("SELECT count(*) FROM src")[0][0] == len(RECORDS)


@pytest.mark.parametrize(
    "query",
    ["SELECT 1; DROP TABLE src", "DELETE FROM src", "select 1; /* c */ select 2", "UPDATE src SET id = 1", ""],
)
def test_it_rejects_multiple_or_writing_statements(query):
    with pytest.raises(ConnectorError) as err:
        split_statements_check(query)
    assert err.value.field == "location"


def test_semicolons_inside_literals_are_not_statement_breaks():
    q = "SELECT ';' AS a, $x$;$x$ AS b, \"we;ird\" FROM t -- ;\n"
    assert split_statements_check(q + ";") == q[: q.index(" --")]
    assert split_statements_check(q) == q[: q.index(" --")]


def test_schema_count_and_preview(conn, loaded, pg_exec):
    schema = {f["name"]: f["type"] for f in conn.infer_schema(loaded)}
    assert schema == {"id": "int", "text": "string", "score": "float", "ok": "bool", "meta": "json"}
    assert conn.count(loaded) == 41
    assert conn.preview(loaded, limit=3) == RECORDS[:3]
    pg_exec("CREATE TABLE IF NOT EXISTS nn (a int NOT NULL, b text)")
    assert conn.infer_schema(DatasetRef("nn", "table")) == [
        {"name": "a", "type": "int", "nullable": False},
        {"name": "b", "type": "string", "nullable": True},
    ]


def test_sink_is_bulk_atomic_and_checksums_canonical_jsonl(conn, pg_exec):
    pg_exec("DROP TABLE IF EXISTS dst")
    w = conn.open_writer("dst", "table")
    w.write(RECORDS[:10])
    # Nothing is visible to other sessions before commit.
    assert pg_exec("SELECT to_regclass('public.dst')")[0][0] is None
    result = w.commit()
    expected = hashlib.sha256("".join(canonical_json(r) + "\n" for r in RECORDS[:10]).encode()).hexdigest()
    assert result["checksum"] == expected and result["records"] == 10
    assert pg_exec("SELECT count(*) FROM dst")[0][0] == 10
    # Replace (default) is idempotent: publishing again does not duplicate.
    w = conn.open_writer("dst", "table")
    w.write(RECORDS[:10])
    w.commit()
    assert pg_exec("SELECT count(*) FROM dst")[0][0] == 10
    # Abort after writing leaves the old contents untouched.
    w = conn.open_writer("dst", "table")
    w.write(RECORDS[10:])
    w.abort()
    assert pg_exec("SELECT count(*) FROM dst")[0][0] == 10
    w = conn.open_writer("dst", "table", mode="append")
    w.write(RECORDS[10:12])
    w.commit()
    assert pg_exec("SELECT count(*) FROM dst")[0][0] == 12


def test_sink_refuses_bad_table_names_and_unknown_columns(conn, pg_exec):
    with pytest.raises(ConnectorError) as err:
        conn.open_writer('x"; DROP TABLE src; --', "table")
    assert err.value.field == "location"
    pg_exec("CREATE TABLE IF NOT EXISTS narrow (id bigint)")
    w = conn.open_writer("narrow", "table")
    with pytest.raises(ConnectorError, match="no column"):
        w.write([{"id": 1, "other": 2}])


@pytest.mark.parametrize("host", ["169.254.169.254", "10.0.0.5", "192.168.1.1", "[::1]", "0.0.0.0"])  # noqa: S104
def test_ssrf_guard_refuses_private_hosts(pg_config, host):
    from catalog.connectors import PostgresConnector, validate_config

    config = {**pg_config, "host": host.strip("[]")}
    # Refused when saved (an IP literal needs no DNS) ...
    with pytest.raises(ConnectorError) as err:
        validate_config("postgresql", config)
    assert err.value.field == "host"
    # ... and again at connect time, for rows saved before the allow-list changed.
    result = PostgresConnector(config).test_connection()
    assert not result.ok and "ALLOWED_PRIVATE_HOSTS" in result.detail


def test_ssrf_guard_resolves_names_at_connect_time(pg_config, settings, monkeypatch):
    settings.ALLOWED_PRIVATE_HOSTS = []
    conn = get_connector_for_kind("postgresql", {**pg_config, "host": "db.example.test"})
    real = socket.getaddrinfo
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        lambda host, *a, **k: real("127.0.0.1", *a, **k) if host == "db.example.test" else real(host, *a, **k),
    )
    result = conn.test_connection()
    assert not result.ok and "127.0.0.1" in result.detail
    settings.ALLOWED_PRIVATE_HOSTS = ["127.0.0.0/8"]
    assert get_connector_for_kind("postgresql", pg_config).test_connection().ok


def test_config_errors_name_the_field():
    from catalog.connectors import validate_config

    for config, field in [
        ({"host": "h", "database": "d"}, "user"),
        ({"host": "h", "database": "d", "user": "u", "port": 70000}, "port"),
        ({"host": "h", "database": "d", "user": "u", "sslmode": "sometimes"}, "sslmode"),
        ({"host": "h", "database": "d", "user": "u", "password": "x"}, "password"),
    ]:
        with pytest.raises(ConnectorError) as err:
            validate_config("postgresql", config)
        assert err.value.field == field


def test_a_rebound_database_name_never_reaches_the_private_address(pg_config, settings, monkeypatch):
    """libpq dials the address the guard approved (hostaddr): its own resolver never sees the name."""
    from modelserver.testing import RebindingResolver, RecordingListener

    settings.ALLOWED_PRIVATE_HOSTS = ["127.0.0.1"]  # 127.0.0.2 is a private address here
    dns = RebindingResolver()
    dns.script("db.rebind.test", "127.0.0.1", "127.0.0.2")
    monkeypatch.setattr(socket, "getaddrinfo", dns)
    # A "private" PostgreSQL on 127.0.0.2 (the real one behind a recording listener).
    private = RecordingListener("127.0.0.2", int(pg_config["port"]), upstream=("127.0.0.1", int(pg_config["port"])))
    try:
        conn = get_connector_for_kind("postgresql", {**pg_config, "host": "db.rebind.test"})
        assert conn.test_connection().ok
        result = conn.test_connection()
        assert not result.ok and "127.0.0.2" in result.detail and "ALLOWED_PRIVATE_HOSTS" in result.detail
        assert private.connections == 0 and dns.queries == ["db.rebind.test"] * 2
    finally:
        private.close()
