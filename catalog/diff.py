"""Version diff: compare two dataset versions by a key field in bounded memory.

Both versions are streamed through their connectors in chunks into a SQLite file on disk (key, hash
of the record's canonical JSON, the record): memory holds one chunk and SQLite's bounded page cache,
whatever the versions' sizes. Counts and samples are then SQL joins over the two indexed tables.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import tempfile
from pathlib import Path

from django.conf import settings
from django.utils.translation import gettext as _

from .connectors import ConnectorError, canonical_json, jsonable

CHUNK = 5000
SAMPLE_MAX = 50


def _rows(records, key: str, start: int, side: str):
    for n, record in enumerate(records, start=start + 1):
        if key not in record:
            raise ConnectorError(
                _("Record %(n)d of %(version)s has no field %(key)r.") % {"n": n, "version": side, "key": key},
                field="key",
            )
        line = canonical_json(jsonable(record))
        yield (
            json.dumps(jsonable(record[key]), sort_keys=True, ensure_ascii=False),
            hashlib.sha256(line.encode("utf-8")).digest()[:16],
            line,
        )


def _load(db: sqlite3.Connection, table: str, chunks, key: str, side: str) -> tuple[int, int]:
    """Stream one version into `table`; returns (records, records whose key repeats an earlier one)."""
    total = duplicates = 0
    for records, _checkpoint in chunks:
        rows = list(_rows(records, key, total, side))
        before = db.total_changes
        db.executemany(f"INSERT OR IGNORE INTO {table} (k, h, rec) VALUES (?, ?, ?)", rows)  # noqa: S608
        duplicates += len(rows) - (db.total_changes - before)
        total += len(rows)
    return total, duplicates


def diff_versions(
    left_chunks, right_chunks, *, key: str, sample: int = 5, labels: tuple[str, str] = ("left", "right")
) -> dict:
    """Counts of added, removed, changed and unchanged records (by `key`), with up to `sample` of each.

    Args:
        left_chunks, right_chunks: iterables of (records, checkpoint) as Connector.read yields them.
        key: the field that identifies a record across versions; a record without it is an error
            (ConnectorError(field="key")). A key repeated within a version counts once (the first).
        sample: records shown per category (at most SAMPLE_MAX).
        labels: how errors name the two versions (e.g. "dataset v3").
    """
    sample = max(0, min(int(sample), SAMPLE_MAX))
    folder = Path(getattr(settings, "WORKSPACE_DIR", tempfile.gettempdir()))
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix="diff-") as tmp:
        db = sqlite3.connect(Path(tmp) / "diff.sqlite3")
        try:
            # A bounded page cache (16 MB) and no journal: the file is scratch, deleted with the folder.
            db.executescript(
                "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-16000;"
                "CREATE TABLE l (k TEXT PRIMARY KEY, h BLOB, rec TEXT) WITHOUT ROWID;"
                "CREATE TABLE r (k TEXT PRIMARY KEY, h BLOB, rec TEXT) WITHOUT ROWID;"
            )
            left_total, left_dupes = _load(db, "l", left_chunks, key, labels[0])
            right_total, right_dupes = _load(db, "r", right_chunks, key, labels[1])

            def count(sql: str) -> int:
                return int(db.execute(sql).fetchone()[0])

            def records(sql: str) -> list:
                return [json.loads(row[0]) for row in db.execute(sql + f" ORDER BY k LIMIT {sample}")]

            added_sql = "FROM r WHERE NOT EXISTS (SELECT 1 FROM l WHERE l.k = r.k)"
            removed_sql = "FROM l WHERE NOT EXISTS (SELECT 1 FROM r WHERE r.k = l.k)"
            changed_sql = "FROM l JOIN r ON r.k = l.k WHERE r.h != l.h"
            result = {
                "key": key,
                "left_records": left_total,
                "right_records": right_total,
                "added": count(f"SELECT count(*) {added_sql}"),  # noqa: S608 - constant SQL
                "removed": count(f"SELECT count(*) {removed_sql}"),  # noqa: S608
                "changed": count(f"SELECT count(*) {changed_sql}"),  # noqa: S608
                "unchanged": count("SELECT count(*) FROM l JOIN r ON r.k = l.k WHERE r.h = l.h"),
                "duplicate_keys": {"left": left_dupes, "right": right_dupes},
                "samples": {
                    "added": records(f"SELECT rec {added_sql}"),  # noqa: S608
                    "removed": records(f"SELECT rec {removed_sql}"),  # noqa: S608
                    "changed": [
                        {"key": json.loads(k), "before": json.loads(before), "after": json.loads(after)}
                        for k, before, after in db.execute(
                            f"SELECT l.k, l.rec, r.rec {changed_sql} ORDER BY l.k LIMIT {sample}"  # noqa: S608
                        )
                    ],
                },
            }
        finally:
            db.close()
    return result
