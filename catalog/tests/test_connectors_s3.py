"""S3 connector against moto's standalone S3 server (a real HTTP server on loopback, not mocked calls).

Streamed reads of JSONL/CSV/Parquet objects and prefixes with resume; multipart publish that is invisible
until commit and leaves nothing on abort; a dead attempt's upload aborted by the cleanup; encrypted,
never-shown credentials; the SSRF guard on the endpoint; traversal in keys and prefixes refused.
"""

import io
import json
import socket

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from catalog.connectors import ConnectorError, DatasetRef, get_connector, get_connector_for_kind
from catalog.models import DataSource
from conftest import S3_TEST_SECRET

from .factories import ProjectFactory

pytestmark = pytest.mark.integration

RECORDS = [{"id": i, "text": f'row {i} "q", a\nb', "score": i / 4} for i in range(53)]


@pytest.fixture
def s3(s3_bucket):
    endpoint, bucket, client = s3_bucket
    conn = get_connector_for_kind("s3", {"endpoint": endpoint, "bucket": bucket, "prefix": "data"}, S3_TEST_SECRET)
    return conn, client, bucket


def _put(client, bucket, key, body: bytes):
    client.put_object(Bucket=bucket, Key=key, Body=body)


def _all(conn, ref, start=None, batch_size=7):
    return [r for chunk, _ in conn.read(ref, batch_size=batch_size, start=start) for r in chunk]


def _jsonl(records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def test_it_tests_the_connection(s3):
    conn, _client, bucket = s3
    result = conn.test_connection()
    assert result.ok and bucket in result.detail
    missing = get_connector_for_kind("s3", {**conn.config, "bucket": "no-such-bucket-here"}, S3_TEST_SECRET)
    result = missing.test_connection()
    assert not result.ok and "no-such-bucket-here" in result.detail


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_objects_read_streamed_and_resume_from_every_checkpoint(s3, fmt):
    conn, client, bucket = s3
    if fmt == "jsonl":
        _put(client, bucket, "data/in/r.jsonl", _jsonl(RECORDS) + b"\n\n")  # blank lines are skipped
        expected = RECORDS
    elif fmt == "csv":
        buf = io.StringIO()
        import csv

        w = csv.writer(buf)
        w.writerow(["id", "text", "score"])
        for r in RECORDS:
            w.writerow([r["id"], r["text"], r["score"]])
        _put(client, bucket, "data/in/r.csv", buf.getvalue().encode())
        expected = [{k: str(v) for k, v in r.items()} for r in RECORDS]
    else:
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(RECORDS), sink, row_group_size=10)
        _put(client, bucket, "data/in/r.parquet", sink.getvalue())
        expected = RECORDS
    ref = DatasetRef(f"in/r.{fmt}", fmt)
    assert _all(conn, ref) == expected
    consumed = 0
    for records, checkpoint in conn.read(ref, batch_size=7):
        consumed += len(records)
        assert checkpoint["record"] == consumed
        # A checkpoint survives JSON (it is stored on the batch row) and resumes right after its chunk.
        assert _all(conn, ref, start=json.loads(json.dumps(checkpoint))) == expected[consumed:]
    assert conn.count(ref) == len(RECORDS)
    assert [f["name"] for f in conn.infer_schema(ref)] == ["id", "text", "score"]


def test_a_prefix_reads_its_objects_in_key_order_and_resumes_across_them(s3):
    conn, client, bucket = s3
    _put(client, bucket, "data/parts/b.jsonl", _jsonl(RECORDS[20:]))
    _put(client, bucket, "data/parts/a.jsonl", _jsonl(RECORDS[:20]))
    _put(client, bucket, "data/parts/.hidden.jsonl", b'{"id": -1}\n')
    _put(client, bucket, "data/partsX/c.jsonl", b'{"id": -2}\n')  # a sibling prefix is not inside
    ref = DatasetRef("parts/", "jsonl")
    assert _all(conn, ref) == RECORDS
    checkpoints = [c for _r, c in conn.read(ref, batch_size=6)]
    for cp in checkpoints:
        assert _all(conn, ref, start=cp) == RECORDS[cp["record"] :]


def test_a_replaced_object_is_not_resumed_mid_record(s3):
    conn, client, bucket = s3
    _put(client, bucket, "data/in/r.jsonl", _jsonl(RECORDS))
    ref = DatasetRef("in/r.jsonl", "jsonl")
    first = next(iter(conn.read(ref, batch_size=5)))[1]
    _put(client, bucket, "data/in/r.jsonl", _jsonl(RECORDS[::-1]))
    with pytest.raises(ConnectorError) as err:
        _all(conn, ref, start=first)
    assert err.value.field == "location" and "changed" in err.value.message


def test_reads_take_blocks_not_whole_objects(s3, monkeypatch):
    """The body is read a block at a time: reading one chunk of a large object fetches a block or two."""
    from catalog.connectors import s3 as module

    conn, client, bucket = s3
    big = _jsonl({"id": i, "text": "x" * 200} for i in range(20_000))  # ~4.3 MB
    _put(client, bucket, "data/in/big.jsonl", big)
    monkeypatch.setattr(module, "_READ_BLOCK", 64 * 1024)
    pulled = []
    original = module.S3Connector._body

    def counting_body(self, obj, start=0):
        body = original(self, obj, start)
        read = body.read

        def tracked(n=None):
            data = read(n)
            pulled.append(len(data))
            return data

        body.read = tracked
        return body

    monkeypatch.setattr(module.S3Connector, "_body", counting_body)
    chunks = conn.read(DatasetRef("in/big.jsonl", "jsonl"), batch_size=100)
    records, _checkpoint = next(chunks)
    chunks.close()
    assert len(records) == 100
    assert sum(pulled) <= 2 * 64 * 1024 < len(big) // 10


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_publish_is_a_multipart_upload_visible_only_after_commit(s3, fmt):
    conn, client, bucket = s3
    conn.config["part_size_mb"] = 5
    rows = [{"id": i, "text": "y" * 300, "n": i * 2} for i in range(40_000)]  # ~13 MB of JSONL: three parts
    w = conn.open_writer(f"out/v1.{fmt}", fmt, staging_key="v9-batch:1:1")
    for i in range(0, len(rows), 5000):
        w.write(rows[i : i + 5000])
    finished = w.finish()
    assert "Contents" not in client.list_objects_v2(Bucket=bucket, Prefix="data/out/")
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["Key"] for u in uploads] == [f"data/out/v1.{fmt}"]
    result = w.commit()
    assert result == finished and result["records"] == len(rows)
    body = client.get_object(Bucket=bucket, Key=f"data/out/v1.{fmt}")["Body"].read()
    import hashlib

    assert hashlib.sha256(body).hexdigest() == result["checksum"] and len(body) == result["size_bytes"]
    if fmt == "jsonl":
        assert len(body) > 10 * 1024 * 1024
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    back = _all(conn, DatasetRef(f"out/v1.{fmt}", fmt), batch_size=10_000)
    expected = rows if fmt != "csv" else [{k: str(v) for k, v in r.items()} for r in rows]
    assert back == expected


def test_abort_and_the_cleanup_of_a_dead_attempt_leave_nothing(s3):
    conn, client, bucket = s3
    w = conn.open_writer("out/v2.jsonl", "jsonl")
    w.write(RECORDS)
    w.abort()
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    # A killed attempt never aborts: its upload stays open until the cleanup finds it.
    dead = conn.open_writer("out/v3.jsonl", "jsonl")
    dead.write(RECORDS)
    dead.finish()
    other = conn.open_writer("out/v3.jsonl.bak", "jsonl")  # another key: not this version's debris
    removed = conn.discard_staged("out/v3.jsonl")
    assert len(removed) == 1 and "data/out/v3.jsonl" in removed[0]
    assert [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])] == [
        "data/out/v3.jsonl.bak"
    ]
    other.abort()
    assert "Contents" not in client.list_objects_v2(Bucket=bucket, Prefix="data/out/")
    # A completed object whose publish did not commit is removed by location.
    w = conn.open_writer("out/v4.jsonl", "jsonl")
    w.write(RECORDS)
    w.commit()
    assert conn.remove_location("out/v4.jsonl").endswith("data/out/v4.jsonl")
    assert conn.remove_location("out/v4.jsonl") is None


@pytest.mark.parametrize(
    "location",
    ["../secret.jsonl", "a/../../b.jsonl", "/abs.jsonl", "a//b.jsonl", "./a.jsonl", "a\\b.jsonl", "a/\x00.jsonl"],
)
def test_traversal_in_keys_is_refused_and_nothing_is_written(s3, location):
    conn, client, bucket = s3
    with pytest.raises(ConnectorError) as err:
        conn.open_writer(location, "jsonl")
    assert err.value.field == "location"
    with pytest.raises(ConnectorError):
        list(conn.read(DatasetRef(location, "jsonl")))
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert "Contents" not in client.list_objects_v2(Bucket=bucket)


@pytest.mark.parametrize("prefix", ["../up", "a/../../b", "/root", "a//b", "."])
def test_traversal_in_the_prefix_is_refused(s3_bucket, prefix):
    endpoint, bucket, _client = s3_bucket
    with pytest.raises(ConnectorError) as err:
        get_connector_for_kind("s3", {"endpoint": endpoint, "bucket": bucket, "prefix": prefix})
    assert err.value.field == "prefix"


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://127.0.0.1:{port}",
        "http://localhost:{port}",
        "http://2130706433:{port}",  # decimal spelling of 127.0.0.1
        "http://0x7f.0.0.1:{port}",  # hex
        "http://127.1:{port}",  # short form
        "http://[::1]:{port}",
        "http://[::ffff:127.0.0.1]:{port}",  # IPv4-mapped IPv6
        "http://169.254.169.254",  # cloud metadata
        "http://metadata.google.internal",
        "http://10.1.2.3:9000",
        "http://0.0.0.0:{port}",
    ],
)
def test_ssrf_spellings_of_the_endpoint_are_refused_naming_it(s3_server, settings, endpoint, db):
    settings.ALLOWED_PRIVATE_HOSTS = []
    port = s3_server.rsplit(":", 1)[1]
    url = endpoint.format(port=port)
    with pytest.raises(ConnectorError) as err:
        conn = get_connector_for_kind("s3", {"endpoint": url, "bucket": "bkt"}, S3_TEST_SECRET)
        conn.open_writer("x.jsonl", "jsonl")
    assert err.value.field == "endpoint", err.value.message
    # The same through the service: a 4xx-style error naming the setting, no row written.
    from django.core.exceptions import ValidationError

    from catalog import services

    with pytest.raises(ValidationError) as verr:
        services.datasource_create(
            actor=None, project=ProjectFactory(), name="evil", kind="s3", config={"endpoint": url, "bucket": "bkt"}
        )
    assert "endpoint" in json.dumps(verr.value.message_dict)
    assert not DataSource.objects.filter(name="evil").exists()


@pytest.mark.parametrize(
    "endpoint",
    ["file:///etc/passwd", "ftp://example.com", "http://user:pw@example.com", "http://example.com/path", "example.com"],
)
def test_malformed_endpoints_are_refused(endpoint):
    with pytest.raises(ConnectorError) as err:
        get_connector_for_kind("s3", {"endpoint": endpoint, "bucket": "bkt"})
    assert err.value.field == "endpoint"


def test_the_client_dials_the_approved_address_not_a_second_resolution(s3_bucket, monkeypatch):
    """DNS rebinding: after the guard approved localhost, a resolver that now says otherwise is never asked."""
    endpoint, bucket, client = s3_bucket
    port = int(endpoint.rsplit(":", 1)[1])
    conn = get_connector_for_kind("s3", {"endpoint": f"http://localhost:{port}", "bucket": bucket}, S3_TEST_SECRET)
    conn.client()  # approved now: localhost -> 127.0.0.1
    real = socket.getaddrinfo
    asked = []

    def rebinding(host, *args, **kwargs):
        asked.append(host)
        if host == "localhost":
            raise socket.gaierror("rebinding: the name now points elsewhere")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    assert conn.test_connection().ok
    assert "localhost" not in asked


def test_no_credentials_means_unsigned_requests_never_the_environment(s3_bucket, monkeypatch):
    endpoint, bucket, client = s3_bucket
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "ENVSECRET")
    conn = get_connector_for_kind("s3", {"endpoint": endpoint, "bucket": bucket})
    seen = []
    c = conn.client()
    c.meta.events.register("before-send.s3", lambda request, **kw: seen.append(dict(request.headers)))
    conn.test_connection()
    assert seen and "Authorization" not in seen[0]
    half = get_connector_for_kind("s3", {"endpoint": endpoint, "bucket": bucket}, {"access_key_id": "only"})
    with pytest.raises(ConnectorError) as err:
        half.client()
    assert err.value.field == "secret_access_key"


@pytest.mark.django_db
def test_credentials_are_encrypted_and_never_shown(s3_bucket, admin_user, client):
    endpoint, bucket, _client = s3_bucket
    from rest_framework.test import APIClient

    api = APIClient()
    api.force_authenticate(admin_user)
    body = {
        "project": ProjectFactory().pk,
        "name": "lake",
        "kind": "s3",
        "config": {"endpoint": endpoint, "bucket": bucket},
        "secret": S3_TEST_SECRET,
    }
    resp = api.post("/api/v1/catalog/data-sources/", body, format="json")
    assert resp.status_code == 201, resp.content
    source = DataSource.objects.get(name="lake")
    for value in S3_TEST_SECRET.values():
        assert value not in resp.content.decode() and value not in source.secret_ciphertext
        assert value not in json.dumps(source.config)
    assert get_connector(source).secret == S3_TEST_SECRET
    assert api.post(f"/api/v1/catalog/data-sources/{source.pk}/test/").json()["ok"] is True
    listed = api.get("/api/v1/catalog/data-sources/").content.decode()
    client.force_login(admin_user)
    page = client.get(f"/catalog/datasource/{source.pk}/change/").content.decode()
    from dataflare_portal.core.models import AuditLogEntry

    audit = json.dumps([[e.before, e.after, e.message] for e in AuditLogEntry.objects.all()], default=str)
    for value in S3_TEST_SECRET.values():
        assert value not in listed and value not in page and value not in audit
    # The admin keeps a credential whose input is left blank and replaces the one that is typed.
    form = {
        "project": source.project_id,
        "name": "lake",
        "kind": "s3",
        "description": "",
        "config": json.dumps(source.config),
        "secret_access_key": "rotated-secret-0002",
    }
    assert client.post(f"/catalog/datasource/{source.pk}/change/", form).status_code == 302
    source.refresh_from_db()
    assert get_connector(source).secret == {**S3_TEST_SECRET, "secret_access_key": "rotated-secret-0002"}
    # A password is not an S3 credential: refused by name, nothing changed.
    resp = client.post(f"/catalog/datasource/{source.pk}/change/", {**form, "password": "pw"})
    assert resp.status_code == 200 and "takes no" in resp.content.decode()
