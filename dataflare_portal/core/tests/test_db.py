"""atomic_unflushed: relaxes only the transaction it opens, only on PostgreSQL."""

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from dataflare_portal.core.db import atomic_unflushed
from dataflare_portal.core.models import SystemConfig

pytestmark = pytest.mark.django_db(transaction=True)


def _statements(work) -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        work()
    return [q["sql"] for q in captured.captured_queries if "synchronous_commit" in q["sql"]]


def _write(relax: bool = True):
    with atomic_unflushed(relax):
        SystemConfig.objects.update_or_create(key="unflushed-probe", defaults={"value": 1})


def test_it_relaxes_the_commit_of_the_transaction_it_opens_on_postgresql():
    expected = ["SET LOCAL synchronous_commit = off"] if connection.vendor == "postgresql" else []
    assert _statements(_write) == expected
    assert _statements(lambda: _write(relax=False)) == []
    assert SystemConfig.objects.filter(key="unflushed-probe").exists()


def test_inside_an_enclosing_transaction_it_leaves_that_commit_alone():
    def nested():
        with transaction.atomic():
            _write()

    assert _statements(nested) == []
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            assert cursor.fetchone()[0] == "on"
