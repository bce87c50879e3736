"""Fixtures: a real reference server, a real Redis (the run's own, keys under a run prefix), TLS material."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import uuid
from collections.abc import Iterator

import pytest

from modelserver.testing import model_server, openai_server  # noqa: F401  (re-exported fixtures)


def configured_redis_url() -> str | None:
    """The Redis this test run was given: REDIS_URL, else TEST_REDIS_DB on the local server, else None."""
    if os.environ.get("REDIS_URL"):
        return os.environ["REDIS_URL"]
    if os.environ.get("TEST_REDIS_DB"):
        return f"redis://127.0.0.1:6379/{int(os.environ['TEST_REDIS_DB'])}"
    return None


@contextlib.contextmanager
def redis_run_namespace(url: str) -> Iterator[tuple[object, str]]:
    """(client, key prefix) on the configured Redis; on exit only keys under the prefix are deleted.

    The database is shared with whatever else uses that URL (a parallel run, a dev server), so nothing
    is flushed: every key a test writes starts with a prefix unique to this use.
    """
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    prefix = f"dataflare-test:{uuid.uuid4().hex}:"
    try:
        yield client, prefix
    finally:
        try:
            keys = list(client.scan_iter(match=prefix + "*", count=500))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


@pytest.fixture
def redis_namespace() -> Iterator[tuple[object, str, str]]:
    """(client, key prefix, url) of the run's Redis; skips when the run was given none."""
    redis = pytest.importorskip("redis")
    url = configured_redis_url()
    if url is None:
        pytest.skip("no Redis configured for this run (REDIS_URL or TEST_REDIS_DB)")
    with redis_run_namespace(url) as (client, prefix):
        try:
            client.ping()
        except redis.RedisError as e:
            pytest.skip(f"no Redis at {url}: {e}")
        yield client, prefix, url


def _cert(subject_cn: str, issuer_key, issuer_name, public_key, *, ca: bool, sans=()):  # type: ignore[no-untyped-def]
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="session")
def tls_material() -> dict[str, bytes]:
    """A CA, a server cert for localhost/127.0.0.1 and a client cert, all PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def pem_key(k) -> bytes:  # type: ignore[no-untyped-def]
        return k.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def pem_cert(c) -> bytes:  # type: ignore[no-untyped-def]
        return c.public_bytes(serialization.Encoding.PEM)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dataflare test CA")])
    ca = _cert("dataflare test CA", ca_key, ca_name, ca_key.public_key(), ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server = _cert("localhost", ca_key, ca_name, server_key.public_key(), ca=False, sans=sans)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _cert("dataflare worker", ca_key, ca_name, client_key.public_key(), ca=False)
    return {
        "ca": pem_cert(ca),
        "server_cert": pem_cert(server),
        "server_key": pem_key(server_key),
        "client_cert": pem_cert(client),
        "client_key": pem_key(client_key),
    }


@pytest.fixture(scope="session")
def tls_for_rebind_name() -> dict[str, bytes]:
    """A CA and a server cert valid for the DNS name model.rebind.test only (no IP address in it)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rebind test CA")])
    ca = _cert("rebind test CA", ca_key, ca_name, ca_key.public_key(), ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    server = _cert(
        "model.rebind.test", ca_key, ca_name, key.public_key(), ca=False, sans=[x509.DNSName("model.rebind.test")]
    )
    return {
        "ca": ca.public_bytes(serialization.Encoding.PEM),
        "server_cert": server.public_bytes(serialization.Encoding.PEM),
        "server_key": key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    }
