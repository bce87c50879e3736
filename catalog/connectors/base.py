"""Connector base classes: errors, test results, dataset references, schema inference and canonical JSON."""

from __future__ import annotations

import base64
import datetime
import decimal
import hashlib
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.utils.translation import gettext as _

__all__ = [
    "ConnectionResult",
    "Connector",
    "ConnectorError",
    "DatasetRef",
    "Writer",
    "canonical_json",
    "dataset_ref",
    "infer_fields",
    "jsonable",
]


class ConnectorError(ValueError):
    """A connector cannot do what was asked; `field` names the config/dataset field at fault, if any."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(str(message))
        self.message = str(message)
        self.field = field


@dataclass
class ConnectionResult:
    ok: bool
    detail: str
    latency_ms: float = 0.0


@dataclass
class DatasetRef:
    """What a connector needs to know about a dataset (a Dataset row works just as well)."""

    location: str
    format: str
    options: dict = field(default_factory=dict)


def dataset_ref(dataset: Any) -> DatasetRef:
    """Accept a Dataset row, a DatasetRef or a dict with location/format/options."""
    if isinstance(dataset, DatasetRef):
        return dataset
    if isinstance(dataset, dict):
        return DatasetRef(dataset["location"], dataset["format"], dict(dataset.get("options") or {}))
    return DatasetRef(dataset.location, dataset.format, dict(getattr(dataset, "options", None) or {}))


def jsonable(value: Any) -> Any:
    """A JSON-safe copy of a value read from a source (dates as ISO text, decimals as numbers)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() and abs(value) < 2**63 else float(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    return str(value)


def canonical_json(record: dict) -> str:
    """The canonical JSON line of a record (sorted keys, compact, UTF-8): what sink checksums hash."""
    return json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


# ---- Schema inference -------------------------------------------------------------------------
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?|[+-]?(inf|nan)", re.IGNORECASE)
_BOOL = {"true", "false"}
_ORDER = {"bool": 0, "int": 1, "float": 2, "string": 3, "json": 4}


def _value_type(value: Any, *, from_text: bool) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, (dict, list)):
        return "json"
    if isinstance(value, str) and from_text:
        text = value.strip()
        if text == "":
            return None
        if text.lower() in _BOOL:
            return "bool"
        if _INT.fullmatch(text):
            return "int"
        if _FLOAT.fullmatch(text):
            return "float"
        if text[0] in "[{":
            try:
                json.loads(text)
                return "json"
            except ValueError:
                pass
    return "string"


def _merge(a: str | None, b: str | None) -> str | None:
    if a is None or a == b:
        return b if a is None else a
    if b is None:
        return a
    if {a, b} == {"int", "float"}:
        return "float"
    if "json" in (a, b):
        return "json"
    return "string"


def infer_fields(records, *, from_text: bool = False) -> list[dict]:
    """Fields in first-seen order with a type (int/float/bool/string/json) and nullability, from sample records."""
    types: dict[str, str | None] = {}
    nullable: dict[str, bool] = {}
    total = 0
    seen_in: dict[str, int] = {}
    for record in records:
        total += 1
        for name, value in record.items():
            t = _value_type(value, from_text=from_text)
            types[name] = _merge(types.get(name), t) if name in types else t
            seen_in[name] = seen_in.get(name, 0) + 1
            if t is None:
                nullable[name] = True
    return [
        {
            "name": name,
            "type": t or "string",
            "nullable": nullable.get(name, False) or seen_in[name] < total,
        }
        for name, t in types.items()
    ]


# ---- Base classes -----------------------------------------------------------------------------
class Connector:
    """One configured connection. Subclasses implement the methods their kind supports."""

    kind = ""
    # Shown in the kind selector (gettext_lazy); the kind itself when empty.
    label = ""
    config_schema: dict = {"type": "object"}
    # Names of the credentials this kind takes (encrypted at rest, write-only in the admin and the API).
    secret_fields: tuple[str, ...] = ()
    # {secret field: its label}; the admin shows a password input per secret field.
    secret_labels: dict = {}
    # Secret fields that hold several lines (e.g. extra HTTP headers): a text area in the admin, never filled back.
    secret_multiline: tuple[str, ...] = ()
    # Source formats (read) and sink formats (open_writer): a kind is a source, a sink or both.
    formats: tuple[str, ...] = ()
    sink_formats: tuple[str, ...] = ()

    def __init__(self, config: dict, secret: dict | None = None):
        self.config = dict(config or {})
        self.secret = dict(secret or {})

    @classmethod
    def capabilities(cls) -> dict:
        """{"source": [formats it reads], "sink": [formats it writes]}."""
        return {"source": list(cls.formats), "sink": list(cls.sink_formats)}

    def validate_config(self) -> None:
        """Rules beyond the JSON Schema (raise ConnectorError naming the field); the schema is checked first."""

    def validate_location(self, fmt: str, location: str) -> None:
        """Check a dataset location is well-formed for this source (ConnectorError(field="location") if not)."""

    def discard_staged(self, location: str, staging_prefix: str = "") -> list[str]:
        """Remove what unfinished writers to `location` left behind (temp files, open uploads); returns what went.

        Publish cleanup (a retry taking over, or the reaper) calls it for a dead attempt's version.
        """
        return []

    def remove_location(self, location: str) -> str | None:
        """Delete the data at `location` (a version whose publish did not commit); returns what was removed."""
        return None

    def test_connection(self) -> ConnectionResult:
        raise NotImplementedError

    def read(self, dataset, batch_size: int = 1000, start: dict | None = None) -> Iterator[tuple[list[dict], dict]]:
        raise NotImplementedError

    def can_plan_reads(self, dataset) -> bool:
        """Whether plan_reads can split this dataset; decided without reading it."""
        return False

    def plan_reads(
        self, dataset, batch_size: int = 1000, max_chunks: int | None = None, after: dict | None = None
    ) -> list[dict] | None:
        """The start checkpoints of every chunk after the first, found without decoding records.

        With them the engine creates every read batch at once, so chunks are read and processed in
        parallel and each read is fused with the stages after it. `read(start=plan[i])` must return
        exactly the chunk that begins there. None: this source cannot be split ahead, or it has more
        than `max_chunks` chunks (it is then read chunk after chunk, each read naming the next start).
        With `after` (where an already read first chunk ends), the plan starts there instead.
        """
        return None

    def infer_schema(self, dataset, sample_size: int = 200) -> list[dict]:
        raise NotImplementedError

    def count(self, dataset) -> int:
        raise NotImplementedError

    def preview(self, dataset, limit: int = 20) -> list[dict]:
        """The first `limit` records."""
        for records, _checkpoint in self.read(dataset, batch_size=max(1, limit)):
            return records[:limit]
        return []

    def open_writer(self, location: str, format: str, fields: list[str] | None = None, **options) -> Writer:
        raise NotImplementedError

    def check_format(self, fmt: str, *, sink: bool = False) -> None:
        allowed = self.sink_formats if sink else self.formats
        if fmt not in allowed:
            raise ConnectorError(
                (
                    _("Format %(format)r cannot be written to a %(kind)s data source (supported: %(allowed)s).")
                    if sink
                    else _("Format %(format)r cannot be read from a %(kind)s data source (supported: %(allowed)s).")
                )
                % {"format": fmt, "kind": self.kind, "allowed": ", ".join(allowed)},
                field="format",
            )


class Writer:
    """Atomic writer: nothing visible at the location until commit(); abort() leaves nothing behind."""

    def __init__(self):
        self.records = 0
        self._hash = hashlib.sha256()
        self.closed = False

    def write(self, records: list[dict]) -> None:
        raise NotImplementedError

    def finish(self) -> dict:
        """Make the written data durable without showing it; returns what commit() will return.

        A publish calls finish(), then, inside its fenced database transaction, commit(): the step
        that makes the data visible is as short as it can be.
        """
        raise NotImplementedError

    def commit(self) -> dict:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and not self.closed:
            self.abort()
        return False
