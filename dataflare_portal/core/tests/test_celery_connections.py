"""Workers keep their database connection between tasks (Celery's fixup would close it every time)."""

from types import SimpleNamespace

import pytest
from celery.fixups.django import DjangoWorkerFixup
from django.db import connection

from dataflare_portal.celery import _check_db_connections, app

WORKER_TASK = SimpleNamespace(request=SimpleNamespace(is_eager=False))


def _run_task_signals(fixup: DjangoWorkerFixup) -> None:
    """What a worker does around one task: the fixup's handlers and ours."""
    fixup.on_task_prerun(WORKER_TASK)
    _check_db_connections(sender=WORKER_TASK)
    fixup.on_task_postrun(WORKER_TASK)


@pytest.mark.django_db(transaction=True)
def test_a_worker_reuses_its_postgresql_connection_across_tasks():
    if connection.vendor != "postgresql":
        pytest.skip("SQLite connections are cheap: with CONN_MAX_AGE=0 each task opens its own")
    fixup = DjangoWorkerFixup(app)
    assert fixup.db_reuse_max == app.conf.get("CELERY_DB_REUSE_MAX") > 0
    # A fresh connection: one the suite opened more than CONN_MAX_AGE ago is rightly closed as obsolete.
    connection.close()
    connection.ensure_connection()
    raw = connection.connection
    for _ in range(5):
        _run_task_signals(fixup)
        with connection.cursor() as cur:
            cur.execute("SELECT 1")
    assert connection.connection is raw

    # Without the setting the fixup closes the connection around every task: the test can tell.
    fixup.db_reuse_max = None
    _run_task_signals(fixup)
    assert connection.connection is None


@pytest.mark.django_db(transaction=True)
def test_a_connection_older_than_conn_max_age_is_replaced(settings):
    if connection.vendor != "postgresql":
        pytest.skip("SQLite connections are not kept between tasks")
    connection.close()
    connection.ensure_connection()
    raw = connection.connection
    connection.close_at = 0  # opened longer than CONN_MAX_AGE ago
    _check_db_connections(sender=WORKER_TASK)
    with connection.cursor() as cur:
        cur.execute("SELECT 1")
    assert connection.connection is not raw


@pytest.mark.django_db(transaction=True)
def test_a_broken_connection_is_replaced_before_the_next_task():
    fixup = DjangoWorkerFixup(app)
    connection.ensure_connection()
    connection.errors_occurred = True  # what Django records after a failed query on a dead connection
    if connection.vendor == "postgresql":
        connection.connection.close()  # the server went away
    _check_db_connections(sender=WORKER_TASK)
    with connection.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone()[0] == 1
    _run_task_signals(fixup)


def test_eager_tasks_leave_the_callers_connection_alone(monkeypatch):
    called = []
    monkeypatch.setattr("django.db.close_old_connections", lambda: called.append(True))
    _check_db_connections(sender=SimpleNamespace(request=SimpleNamespace(is_eager=True)))
    assert called == []
    _check_db_connections(sender=WORKER_TASK)
    assert called == [True]
