"""The http connector against a real HTTP server on loopback (catalog/tests/httpserver.py), not mocked calls.

Files in three formats read through the file readers with resume; redirects followed hop by hop, each hop
checked by the SSRF guard (a redirect to a refused address is refused, loopback included when private
addresses are not allowed); credentials sent to the base URL's origin only; time limits (hanging and
dripping servers), the size limit, and a download killed with SIGKILL then resumed with Range.
"""

import io
import json
import multiprocessing
import os
import signal
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from catalog.connectors import ConnectorError, DatasetRef, get_connector, get_connector_for_kind
from catalog.models import DataSource

from .factories import ProjectFactory
from .httpserver import start_server, stop_server

pytestmark = pytest.mark.integration

RECORDS = [{"id": i, "text": f'row {i} "q", a\nb', "score": i / 4} for i in range(53)]


def _jsonl(records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def _csv(records) -> bytes:
    import csv

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue().encode()


def _parquet(records) -> bytes:
    out = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records), out, row_group_size=10)
    return out.getvalue()


@pytest.fixture
def server():
    srv = start_server()
    yield srv
    stop_server(srv)


@pytest.fixture
def http(server, tmp_path):
    made = []

    def make(**config):
        conn = get_connector_for_kind("http", {"base_url": server.url(), **config})
        made.append(conn)
        conn.bind_workspace(tmp_path / f"run{len(made)}")  # each connector a run of its own
        return conn

    return make


def _all(conn, ref, start=None, batch_size=7):
    return [r for chunk, _ in conn.read(ref, batch_size=batch_size, start=start) for r in chunk]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_files_are_read_by_the_file_readers_and_resume_from_every_checkpoint(server, http, fmt):
    body = {"jsonl": _jsonl, "csv": _csv, "parquet": _parquet}[fmt](RECORDS)
    server.put(f"r.{fmt}", body)
    conn = http()
    ref = DatasetRef(f"files/r.{fmt}", fmt)
    got = _all(conn, ref)
    expected = RECORDS if fmt != "csv" else [{k: str(v) for k, v in r.items()} for r in RECORDS]
    assert got == expected
    checkpoints = [cp for _chunk, cp in conn.read(ref, batch_size=7)]
    assert len(checkpoints) > 5
    for cp in checkpoints[:-1]:
        assert _all(conn, ref, start=cp) == expected[cp["record"] :]
    # One download per run: every later read used the file in the run's folder.
    assert len([e for e in server.requests_for(f"r.{fmt}") if e[0] == "GET"]) == 1
    assert conn.count(ref) == len(RECORDS)
    assert [f["name"] for f in conn.infer_schema(ref)] == ["id", "text", "score"]


def test_jsonl_reads_can_be_planned_like_files(server, http):
    server.put("p.jsonl", _jsonl(RECORDS))
    conn = http()
    ref = DatasetRef("files/p.jsonl", "jsonl")
    assert conn.can_plan_reads(ref)
    starts = conn.plan_reads(ref, batch_size=10)
    assert [s["record"] for s in starts] == [10, 20, 30, 40, 50]
    assert _all(conn, ref, start=starts[2], batch_size=10) == RECORDS[30:]
    assert conn.input_bytes(ref) == len(_jsonl(RECORDS))


def test_the_shared_cache_is_revalidated_and_refetched_when_the_file_changed(server, tmp_path, settings):
    settings.WORKSPACE_DIR = tmp_path / "ws"
    server.put("c.jsonl", _jsonl(RECORDS[:5]))
    conn = get_connector_for_kind("http", {"base_url": server.url()})  # no run bound: the shared cache
    ref = DatasetRef("files/c.jsonl", "jsonl")
    assert conn.preview(ref, limit=3) == RECORDS[:3]
    assert conn.preview(ref, limit=3) == RECORDS[:3]
    gets = [e for e in server.requests_for("c.jsonl") if e[0] == "GET"]
    assert len(gets) == 2 and gets[1][2].get("if-none-match") == server.etag("c.jsonl")
    server.put("c.jsonl", _jsonl(RECORDS[10:15]))
    assert conn.preview(ref, limit=3) == RECORDS[10:13]


def test_redirects_are_followed_hop_by_hop(server, http):
    server.put("r.jsonl", _jsonl(RECORDS))
    assert _all(http(), DatasetRef("redirect/3/files/r.jsonl", "jsonl")) == RECORDS
    with pytest.raises(ConnectorError) as err:
        _all(http(max_redirects=2), DatasetRef("redirect/3/files/r.jsonl", "jsonl"))
    assert err.value.field == "max_redirects"
    with pytest.raises(ConnectorError) as err:
        _all(http(), DatasetRef("loop", "jsonl"))
    assert err.value.field == "max_redirects"


def test_a_redirect_to_a_refused_address_is_refused_and_nothing_is_fetched(server, http, settings):
    """localhost is allowed, 127.0.0.1 is not: the redirect's target is checked, not just the first URL."""
    server.put("r.jsonl", _jsonl(RECORDS))
    settings.ALLOWED_PRIVATE_HOSTS = ["localhost"]
    conn = get_connector_for_kind("http", {"base_url": server.url(host="localhost")})
    assert _all(conn, DatasetRef("files/r.jsonl", "jsonl")) == RECORDS  # the base itself is fine
    before = len(server.log)
    target = server.url("files/r.jsonl", host="127.0.0.1")
    with pytest.raises(ConnectorError) as err:
        _all(conn, DatasetRef(f"away/x?to={target}", "jsonl"))
    assert err.value.field == "location"
    assert "127.0.0.1" in err.value.message and "loopback" in err.value.message
    assert [e[1] for e in server.log[before:]] == ["/away/x?to=" + target]  # never dialed the target
    for evil in ("http://169.254.169.254/latest/meta-data/", "http://10.1.2.3/x", "file:///etc/passwd"):
        with pytest.raises(ConnectorError) as err:
            _all(conn, DatasetRef(f"away/x?to={evil}", "jsonl"))
        assert err.value.field == "location", evil


@pytest.mark.parametrize(
    "base",
    [
        "http://127.0.0.1:{port}/",
        "http://localhost:{port}/",
        "http://2130706433:{port}/",  # decimal spelling of 127.0.0.1
        "http://0x7f.0.0.1:{port}/",  # hex
        "http://127.1:{port}/",  # short form
        "http://[::1]:{port}/",
        "http://[::ffff:127.0.0.1]:{port}/",  # IPv4-mapped IPv6
        "http://0.0.0.0:{port}/",
        "http://169.254.169.254/latest/",  # cloud metadata
        "http://metadata.google.internal/",
        "http://10.1.2.3/",
    ],
)
def test_with_private_addresses_refused_loopback_itself_is_refused(server, settings, base):
    settings.ALLOWED_PRIVATE_HOSTS = []
    with pytest.raises(ConnectorError) as err:
        get_connector_for_kind("http", {"base_url": base.format(port=server.port)})
    assert err.value.field == "base_url", err.value.message
    assert server.log == []


@pytest.mark.parametrize(
    "location",
    ["../x.jsonl", "files/../../x.jsonl", "/etc/passwd", "http://evil/x", "a//b", "%2e%2e/x", "a\\b", "..%2f..%2fx"],
)
def test_traversal_and_absolute_locations_are_refused(http, location):
    with pytest.raises(ConnectorError) as err:
        http().url(location)
    assert err.value.field == "location"


@pytest.mark.parametrize(
    "base", ["ftp://example.com/", "http://user:pw@example.com/", "http://example.com/?q=1", "example.com"]
)
def test_malformed_base_urls_are_refused(base):
    with pytest.raises(ConnectorError) as err:
        get_connector_for_kind("http", {"base_url": base})
    assert err.value.field == "base_url"


def test_credentials_go_to_the_base_origin_only(server, tmp_path):
    server.put("a.jsonl", _jsonl(RECORDS[:3]))
    conn = get_connector_for_kind(
        "http", {"base_url": server.url(host="localhost")}, {"bearer_token": server.token, "headers": "X-Api: k1"}
    )
    conn.bind_workspace(tmp_path)
    assert _all(conn, DatasetRef("auth/a.jsonl", "jsonl")) == RECORDS[:3]
    assert server.log[-1][2]["authorization"] == f"Bearer {server.token}" and server.log[-1][2]["x-api"] == "k1"
    # Redirected to another origin (127.0.0.1 instead of localhost): no token, no extra header.
    _all(conn, DatasetRef(f"away/y?to={server.url('files/a.jsonl')}", "jsonl"))
    assert "authorization" not in server.log[-1][2] and "x-api" not in server.log[-1][2]
    wrong = get_connector_for_kind("http", {"base_url": server.url()}, {"bearer_token": "nope"})
    wrong.bind_workspace(tmp_path / "w")
    with pytest.raises(ConnectorError) as err:
        _all(wrong, DatasetRef("auth/a.jsonl", "jsonl"))
    assert "401" in err.value.message and err.value.field == "secret"
    # Other credentials, another download: a source without the token never reads the one fetched with it.
    assert wrong.local_path("auth/a.jsonl", "jsonl").name != conn.local_path("auth/a.jsonl", "jsonl").name
    bad = get_connector_for_kind("http", {"base_url": server.url()}, {"headers": "Host: evil"})
    with pytest.raises(ConnectorError) as err:
        bad.request(server.url())
    assert err.value.field == "secret.headers"


def test_a_hanging_server_hits_the_read_timeout(server, http):
    server.put("h.jsonl", _jsonl(RECORDS))
    started = time.monotonic()
    with pytest.raises(ConnectorError) as err:
        _all(http(read_timeout=1, total_timeout=30), DatasetRef("hang/h.jsonl", "jsonl"))
    assert "read timeout" in err.value.message
    assert time.monotonic() - started < 10


def test_a_dripping_server_hits_the_total_time_limit(server, http):
    server.put("d.jsonl", _jsonl(RECORDS))
    server.drip_seconds = 0.1
    started = time.monotonic()
    with pytest.raises(ConnectorError) as err:
        _all(http(read_timeout=5, total_timeout=2), DatasetRef("drip/d.jsonl", "jsonl"))
    assert err.value.field == "total_timeout"
    assert 1.5 < time.monotonic() - started < 8


def test_oversize_files_are_refused_and_nothing_is_kept(server, http, tmp_path):
    big = _jsonl([{"id": i, "pad": "x" * 200} for i in range(6000)])  # ~1.3 MB
    assert len(big) > 1024 * 1024
    server.put("big.jsonl", big)
    for location in ("files/big.jsonl", "nolength/big.jsonl"):  # declared size, and counted while streaming
        with pytest.raises(ConnectorError) as err:
            _all(http(max_size_mb=1), DatasetRef(location, "jsonl"))
        assert err.value.field == "max_size_mb", location
    left = [p.name for p in tmp_path.glob("run*/downloads/*") if not p.name.endswith((".lock", ".json"))]
    assert left == []


def test_a_dropped_connection_is_resumed_with_range_in_the_same_call(server, http):
    body = _jsonl(RECORDS * 40)
    server.put("x.jsonl", body)
    assert _all(http(), DatasetRef("drop/5000/x.jsonl", "jsonl"), batch_size=500) == RECORDS * 40
    gets = server.requests_for("drop/5000/x.jsonl")
    assert len(gets) == 2
    assert gets[1][2]["range"] == "bytes=5000-" and gets[1][2]["if-range"] == server.etag("x.jsonl")


def _fetch_in_child(conn, location):
    conn.fetch(location, "jsonl")


@pytest.mark.parametrize("changed", [False, True], ids=["same-file", "file-changed"])
def test_a_killed_download_resumes_with_range_on_the_retry(server, http, tmp_path, changed):
    """SIGKILL mid-download; the retry asks for the rest (Range + If-Range) and appends only to the same file."""
    body = _jsonl([{"id": i, "pad": "y" * 100} for i in range(4000)])
    server.put("k.jsonl", body)
    conn = http()
    location = "stall/200000/k.jsonl"
    child = multiprocessing.get_context("fork").Process(target=_fetch_in_child, args=(conn, location))
    child.start()
    part = conn.local_path(location, "jsonl").with_name(conn.local_path(location, "jsonl").name + ".part")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (part.exists() and part.stat().st_size >= 200000):
        time.sleep(0.05)
    assert part.stat().st_size == 200000
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    assert child.exitcode == -signal.SIGKILL
    if changed:
        body = _jsonl([{"id": i, "pad": "z" * 90} for i in range(4000)])
        server.put("k.jsonl", body)
    assert "range" not in server.requests_for(location)[0][2]
    path = conn.fetch(location, "jsonl")
    assert path.read_bytes() == body and not part.exists()
    retry = server.requests_for(location)[-1][2]
    assert retry["range"] == "bytes=200000-"
    assert retry["if-range"] != server.etag("k.jsonl") if changed else retry["if-range"] == server.etag("k.jsonl")


def test_test_connection_heads_the_base_or_a_test_path(server, http):
    server.put("t.jsonl", b"{}\n")
    assert http().test_connection().ok
    assert http(test_path="files/t.jsonl").test_connection().ok
    assert server.log[-1][0] == "HEAD"
    # A server without HEAD: a GET of the first byte instead.
    assert http(test_path="nohead/t.jsonl").test_connection().ok
    assert [(e[0], e[2].get("range")) for e in server.requests_for("nohead/")] == [("HEAD", None), ("GET", "bytes=0-0")]
    result = http(test_path="files/missing.jsonl").test_connection()
    assert not result.ok and "404" in result.detail
    result = http(test_path="auth/t.jsonl").test_connection()
    assert not result.ok and "401" in result.detail


@pytest.mark.django_db
def test_credentials_are_encrypted_and_never_shown(server, admin_user, client):
    from rest_framework.test import APIClient

    api = APIClient()
    api.force_authenticate(admin_user)
    secret = {"bearer_token": server.token, "headers": "X-Api: secret-header-value"}
    body = {
        "project": ProjectFactory().pk,
        "name": "web",
        "kind": "http",
        "config": {"base_url": server.url(), "test_path": "auth/t.jsonl"},
        "secret": secret,
    }
    server.put("t.jsonl", b'{"a": 1}\n')
    resp = api.post("/api/v1/catalog/data-sources/", body, format="json")
    assert resp.status_code == 201, resp.content
    source = DataSource.objects.get(name="web")
    for value in secret.values():
        assert value not in resp.content.decode() and value not in source.secret_ciphertext
    assert get_connector(source).secret == secret
    assert api.post(f"/api/v1/catalog/data-sources/{source.pk}/test/").json()["ok"] is True
    client.force_login(admin_user)
    page = client.get(f"/catalog/datasource/{source.pk}/change/").content.decode()
    for value in secret.values():
        assert value not in page
    # A private redirect target through the API: a 4xx naming the field, never a 500.
    resp = api.post(
        "/api/v1/catalog/data-sources/",
        {**body, "name": "evil", "config": {"base_url": "http://169.254.169.254/"}},
        format="json",
    )
    assert resp.status_code == 400 and "base_url" in resp.content.decode()
    assert not DataSource.objects.filter(name="evil").exists()
