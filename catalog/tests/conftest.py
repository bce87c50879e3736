"""Catalog test helpers: a scratch PostgreSQL database on the machine's real server."""

import os
import uuid

import psycopg
import pytest

PG_HOST = os.environ.get("TEST_PG_HOST", "127.0.0.1")


def _admin_conn():
    return psycopg.connect(host=PG_HOST, user="postgres", dbname="postgres", autocommit=True, connect_timeout=5)


@pytest.fixture(scope="session")
def pg_scratch_db():
    """A throw-away database on the real server (dropped at the end), or skip when none is reachable."""
    name = f"df_conn_scratch_{uuid.uuid4().hex[:8]}"
    try:
        with _admin_conn() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL is not reachable: {exc}")
    yield name
    with _admin_conn() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_config(pg_scratch_db):
    return {"host": PG_HOST, "port": 5432, "database": pg_scratch_db, "user": "postgres", "sslmode": "disable"}


@pytest.fixture
def pg_exec(pg_scratch_db):
    """Run SQL directly in the scratch database (to set up and inspect tables)."""

    def run(query, params=None):
        with psycopg.connect(host=PG_HOST, user="postgres", dbname=pg_scratch_db, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else None

    return run
