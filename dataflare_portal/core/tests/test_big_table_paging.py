"""Big admin tables page without COUNT(*) and say which rows they show, never an invented total."""

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from dataflare_portal.core.admin_base import WindowPaginator
from dataflare_portal.core.models import AuditLogEntry

URL = "/core/auditlogentry/"


@pytest.fixture
def entries(db):
    AuditLogEntry.objects.bulk_create(
        AuditLogEntry(action="update", object_type="core.test", object_id=str(i), message=f"entry {i}")
        for i in range(120)
    )


def _paginator_text(html: str) -> str:
    block = re.search(r'<p class="paginator">(.*?)</p>', html, re.S).group(1)
    return " ".join(re.sub(r"<[^>]+>", " ", block).split())


def test_the_first_page_shows_its_rows_and_that_more_follow_without_counting(client, entries):
    with CaptureQueriesContext(connection) as ctx:
        html = client.get(URL).content.decode()
    table = AuditLogEntry._meta.db_table
    assert not [q["sql"] for q in ctx.captured_queries if "COUNT(" in q["sql"].upper() and table in q["sql"]]
    text = _paginator_text(html)
    assert "1–50" in text and "more on the next page" in text
    assert "1000000000" not in html and "Show all" not in html
    assert 'href="?p=2"' in html and 'href="?p=3"' not in html  # links reach the next page, no further


def test_the_last_page_says_where_it_ends_and_beyond_it_is_an_error(client, entries):
    text = _paginator_text(client.get(URL + "?p=3").content.decode())
    assert "101–120" in text and "more on the next page" not in text
    response = client.get(URL + "?p=4")
    assert response.status_code == 302 and response["Location"].endswith("?e=1")


def test_a_search_shows_no_invented_result_count(client, entries):
    html = client.get(URL + "?q=entry").content.decode()
    assert "results" not in re.sub(r"<[^>]+>", " ", html.split('id="changelist-search"')[1].split("</form>")[0])


def test_the_paginator_reads_one_row_past_the_page():
    rows = list(range(101))
    first = WindowPaginator(rows, 50, page_number=1)
    assert (first.count, first.has_more, first.first_row, first.last_row) == (51, True, 1, 50)
    assert list(first.page(1).object_list) == rows[:50]
    last = WindowPaginator(rows, 50, page_number=3)
    assert (last.count, last.has_more, last.first_row, last.last_row) == (101, False, 101, 101)
    assert list(last.page(3).object_list) == [100]
    empty = WindowPaginator([], 50, page_number=1)
    assert (empty.count, empty.first_row, list(empty.page(1).object_list)) == (0, 0, [])
