"""The `dedup` kind (global): exact duplicates by content hash, optional near-duplicates by MinHash + LSH.

Seen hashes live in a SQLite file in the stage workspace, not in a Python set, so memory stays
flat whatever the input size (the page cache is bounded); the file is removed when the stage ends.
"""

from __future__ import annotations

import hashlib
import json
import operator
import sqlite3
import struct
import tempfile
import unicodedata
from collections.abc import Iterator
from pathlib import Path

from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from .base import GlobalStageKind, StageConfigError, StageContext, StageResult

_MASK64 = (1 << 64) - 1
PARTITIONS_MAX = 64
# Without a `partitions` setting: twice the live workers, within these bounds.
PARTITIONS_DEFAULT_MIN, PARTITIONS_DEFAULT_MAX = 2, 16


class DedupKind(GlobalStageKind):
    """Keeps the first occurrence of every record whose normalised content was not seen before."""

    name = "dedup"
    label = _("Deduplicate")
    description = _("Drop exact duplicates by content hash; optionally near-duplicates by MinHash.")
    config_schema = {
        "type": "object",
        "properties": {
            "fields": {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "minItems": 1,
                "default": ["text"],
                "title": _("Fields compared"),
            },
            "normalize": {
                "type": "object",
                "title": _("Before comparing"),
                "properties": {
                    "lowercase": {"type": "boolean", "title": _("Ignore case")},
                    "whitespace": {"type": "boolean", "title": _("Ignore whitespace differences")},
                    "unicode": {"type": "boolean", "title": _("Normalise Unicode (NFKC)")},
                },
                "additionalProperties": False,
                "default": {"lowercase": True, "whitespace": True, "unicode": True},
            },
            "partitions": {
                "type": "integer",
                "minimum": 1,
                "maximum": PARTITIONS_MAX,
                "title": _("Partitions"),
                "description": _(
                    "Exact duplicates are found in this many hash partitions, reduced in parallel by every "
                    "worker; twice the number of live workers (2 to 16) when absent. Near-duplicate "
                    "detection runs as one unit."
                ),
            },
            "near_duplicate": {
                "type": "object",
                "title": _("Near duplicates (MinHash)"),
                "properties": {
                    "enabled": {"type": "boolean", "title": _("Also drop near duplicates")},
                    "threshold": {
                        "type": "number",
                        "exclusiveMinimum": 0,
                        "maximum": 1,
                        "title": _("Similarity threshold"),
                        "description": _("Jaccard similarity from 0 to 1; 0.8 when absent."),
                    },
                    "num_perm": {
                        "type": "integer",
                        "minimum": 16,
                        "maximum": 256,
                        "title": _("Permutations"),
                        "description": _("64 when absent; a multiple of the bands."),
                    },
                    "bands": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": 128,
                        "title": _("Bands"),
                        "description": _("16 when absent."),
                    },
                    "shingle_size": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": 20,
                        "title": _("Shingle size (characters)"),
                        "description": _("5 when absent."),
                    },
                },
                "additionalProperties": False,
                "default": {"enabled": False},
            },
        },
        "additionalProperties": False,
    }

    def check_config(self, config: dict) -> None:
        near = config.get("near_duplicate") or {}
        num_perm = near.get("num_perm", 64)
        bands = near.get("bands", 16)
        if num_perm % bands:
            raise StageConfigError(
                gettext("num_perm (%(p)d) must be a multiple of bands (%(b)d).") % {"p": num_perm, "b": bands},
                "$.near_duplicate.bands",
            )

    def partitions(self, config: dict, live_workers: int) -> int:
        """Exact dedup runs partitioned (the first occurrence of a key wins in its partition); near-dup as one unit."""
        config = config or {}
        if (config.get("near_duplicate") or {}).get("enabled"):
            return 0
        if config.get("partitions"):
            return int(config["partitions"])
        return max(PARTITIONS_DEFAULT_MIN, min(PARTITIONS_DEFAULT_MAX, 2 * max(0, int(live_workers))))

    def record_keys(self, records: list[dict], ctx: StageContext) -> list[bytes]:
        """The sha256 of each record's normalised fields: the same digest the one-unit path compares."""
        config = self.defaults(ctx.config)
        norm = {"lowercase": True, "whitespace": True, "unicode": True, **(config.get("normalize") or {})}
        fields = list(config["fields"])
        sha = hashlib.sha256
        return [sha(_normalized(record, fields, norm).encode("utf-8", "surrogatepass")).digest() for record in records]

    def reduce_partition(self, entries: Iterator[tuple[object, bytes]], ctx: StageContext) -> Iterator[object]:
        """Every occurrence of a key after its first (entries come in input order)."""
        seen: set[bytes] = set()
        add = seen.add
        for position, key in entries:
            if key in seen:
                yield position
            else:
                add(key)

    def run_global(self, chunks: Iterator[list[dict]], ctx: StageContext) -> Iterator[StageResult]:
        config = self.defaults(ctx.config)
        norm = {"lowercase": True, "whitespace": True, "unicode": True, **(config.get("normalize") or {})}
        fields = list(config["fields"])
        near = config.get("near_duplicate") or {}
        workspace = Path(ctx.workspace) if ctx.workspace else Path(tempfile.mkdtemp(prefix="df-dedup-"))
        workspace.mkdir(parents=True, exist_ok=True)
        path = workspace / f"dedup-{ctx.stage_key or 'stage'}-{ctx.attempt}.sqlite3"
        store = _SeenStore(path, near if near.get("enabled") else None)
        try:
            for chunk in chunks:
                texts = [_normalized(record, fields, norm) for record in chunk]
                flags = store.new_flags(texts)
                kept = [record for record, new in zip(chunk, flags, strict=True) if new]
                yield StageResult(records=kept, filtered=len(chunk) - len(kept))
        finally:
            store.close()


def _normalized(record: dict, fields: list[str], norm: dict) -> str:
    parts = []
    for name in fields:
        value = record.get(name)
        if value is None:
            text = ""
        elif isinstance(value, str):
            text = value
        else:
            text = json.dumps(value, sort_keys=True, ensure_ascii=False)
        if norm.get("unicode") and not unicodedata.is_normalized("NFKC", text):
            # The quick check costs a fraction of normalising, and text a clean stage normalised passes it.
            text = unicodedata.normalize("NFKC", text)
        if norm.get("lowercase"):
            text = text.lower()
        if norm.get("whitespace"):
            text = " ".join(text.split())
        parts.append(text)
    return "\x1f".join(parts)


def _shingle_hash(shingle: str) -> int:
    return int.from_bytes(hashlib.blake2b(shingle.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


class _SeenStore:
    """Disk-backed set of content hashes (and LSH buckets for near-duplicates)."""

    def __init__(self, path: Path, near: dict | None):
        path.unlink(missing_ok=True)  # a retried attempt starts from nothing
        self.path = path
        self.db = sqlite3.connect(str(path), isolation_level=None)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-16000", "temp_store=FILE"):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.execute("CREATE TABLE seen (h BLOB PRIMARY KEY) WITHOUT ROWID")
        self.db.execute("BEGIN")
        self._pending = 0
        self.near = None
        if near:
            self.num_perm = near.get("num_perm", 64)
            self.bands = near.get("bands", 16)
            self.rows = self.num_perm // self.bands
            self.threshold = near.get("threshold", 0.8)
            self.shingle = near.get("shingle_size", 5)
            self.db.execute("CREATE TABLE sig (id INTEGER PRIMARY KEY, s BLOB)")
            # Bucket key = band number byte + band hash, so one IN (...) query probes every band.
            self.db.execute("CREATE TABLE lsh (k BLOB PRIMARY KEY, id INTEGER) WITHOUT ROWID")
            self.near = True

    LOOKUP_GROUP = 500  # below SQLite's host-parameter limit

    def new_flags(self, texts: list[str]) -> list[bool]:
        """For each text, in order: True if neither it (nor, if enabled, a near-duplicate) was seen before."""
        digests = [hashlib.sha256(t.encode("utf-8", "surrogatepass")).digest() for t in texts]
        unique = list(dict.fromkeys(digests))
        seen: set[bytes] = set()
        for i in range(0, len(unique), self.LOOKUP_GROUP):
            group = unique[i : i + self.LOOKUP_GROUP]
            marks = ",".join("?" * len(group))
            seen.update(row[0] for row in self.db.execute(f"SELECT h FROM seen WHERE h IN ({marks})", group))  # noqa: S608
        flags = []
        fresh = []
        for digest, text in zip(digests, texts, strict=True):
            new = digest not in seen
            seen.add(digest)  # a repeat later in the same chunk is a duplicate of this one
            if new:
                fresh.append((digest,))
                if self.near:
                    new = self._near_new(text)
            flags.append(new)
        self.db.executemany("INSERT INTO seen (h) VALUES (?)", fresh)
        self._pending += len(fresh)
        if self._pending >= 50_000:
            # Commit in groups: one transaction per record would be disk-bound, one for all grows the journal.
            self.db.execute("COMMIT")
            self.db.execute("BEGIN")
            self._pending = 0
        return flags

    def _signature(self, text: str) -> list[int]:
        # One-permutation hashing with rotation densification: one hash per shingle, not one per permutation.
        n, k = len(text), self.shingle
        shingles = {text[i : i + k] for i in range(max(1, n - k + 1))}
        bins = [_MASK64] * self.num_perm
        for sh in shingles:
            # A stable hash, not the salted built-in hash(): the same text gets the same signature in every
            # process (PYTHONHASHSEED), so a redone attempt drops exactly the same near-duplicates.
            h = _shingle_hash(sh)
            b = h % self.num_perm
            v = h // self.num_perm
            if v < bins[b]:
                bins[b] = v
        if any(v == _MASK64 for v in bins):
            filled = [i for i, v in enumerate(bins) if v != _MASK64]
            if filled:
                for i in range(self.num_perm):
                    if bins[i] == _MASK64:
                        j = next((f for f in filled if f > i), filled[0])
                        bins[i] = (bins[j] + (j - i) % self.num_perm) & _MASK64
        return bins

    def _near_new(self, text: str) -> bool:
        sig = self._signature(text)
        r = self.rows
        keys = [
            bytes((b,)) + hashlib.blake2b(struct.pack(f"<{r}Q", *sig[b * r : (b + 1) * r]), digest_size=12).digest()
            for b in range(self.bands)
        ]
        marks = ",".join("?" * len(keys))
        query = f"SELECT s FROM sig WHERE id IN (SELECT id FROM lsh WHERE k IN ({marks}))"  # noqa: S608
        for (blob,) in self.db.execute(query, keys):
            other = struct.unpack(f"<{self.num_perm}Q", blob)
            same = sum(map(operator.eq, sig, other))
            if same / self.num_perm >= self.threshold:
                return False
        cur = self.db.execute("INSERT INTO sig (s) VALUES (?)", (struct.pack(f"<{self.num_perm}Q", *sig),))
        sid = cur.lastrowid
        self.db.executemany("INSERT OR IGNORE INTO lsh (k, id) VALUES (?, ?)", [(k, sid) for k in keys])
        return True

    def close(self):
        try:
            self.db.close()
        finally:
            self.path.unlink(missing_ok=True)
