"""The connector registry: built-in kinds plus third-party kinds from the `dataflare.connectors` entry points.

Mirrors the stage kind registry (pipelines/stagekinds/registry.py): built-ins load first, entry points
may add kinds but never replace one, and a plug-in that fails to import is logged and skipped so a
broken package cannot take the portal down.
"""

from __future__ import annotations

import logging
import re
import threading
from importlib.metadata import entry_points

from .base import Connector

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "dataflare.connectors"
# Kinds are stored in DataSource.kind (20 characters) and used in URLs and CSS classes.
_KIND_NAME = re.compile(r"^[a-z][a-z0-9_]{0,19}$")
# Secret names become form fields and JSON keys.
_SECRET_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


class ConnectorRegistry:
    """Kind -> Connector class; built-ins first, entry points may add (never replace) kinds."""

    def __init__(self):
        self._kinds: dict[str, type[Connector]] = {}
        self._loaded = False
        self._lock = threading.Lock()

    def register(self, cls: type[Connector], *, replace: bool = False) -> type[Connector]:
        """Add a connector class; refuses a bad kind name, a non-Connector or a taken name (unless replace)."""
        if not (isinstance(cls, type) and issubclass(cls, Connector)):
            raise TypeError(f"{cls!r} is not a Connector subclass")
        kind = getattr(cls, "kind", "")
        if not isinstance(kind, str) or not _KIND_NAME.match(kind):
            raise TypeError(f"{cls!r} has no valid kind (lowercase letters, digits, _; at most 20)")
        if not isinstance(cls.config_schema, dict) or cls.config_schema.get("type") != "object":
            raise TypeError(f"{cls!r}: config_schema must be a JSON Schema of an object")
        bad = [n for n in cls.secret_fields if not (isinstance(n, str) and _SECRET_NAME.match(n))]
        if bad:
            raise TypeError(f"{cls!r}: secret field names must be lowercase identifiers, got {bad}")
        if not cls.formats and not cls.sink_formats:
            raise TypeError(f"{cls!r} is neither a source nor a sink (formats and sink_formats are empty)")
        if kind in self._kinds and not replace:
            raise ValueError(f"connector kind {kind!r} is already registered")
        self._kinds[kind] = cls
        return cls

    def unregister(self, kind: str) -> None:
        """Remove a kind (tests that install a plug-in take it out again)."""
        self._ensure_loaded()
        self._kinds.pop(kind, None)

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            from .files import FileConnector
            from .httpsource import HTTPConnector
            from .mysql import MySQLConnector
            from .postgres import PostgresConnector
            from .s3 import S3Connector

            for cls in (FileConnector, PostgresConnector, S3Connector, MySQLConnector, HTTPConnector):
                if cls.kind not in self._kinds:
                    self.register(cls)
            self._load_entry_points()
            self._loaded = True

    def _load_entry_points(self) -> None:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                cls = ep.load()
                if ep.name in self._kinds or getattr(cls, "kind", ep.name) in self._kinds:
                    logger.warning("connector entry point %s ignored: the kind is taken", ep.name)
                    continue
                self.register(cls)
            except Exception:
                # A broken plug-in must not take the portal down; its kind is simply not offered.
                logger.exception("connector entry point %s failed to load", ep.name)

    def reload(self) -> None:
        """Forget what was loaded and load built-ins and entry points again (after installing a plug-in)."""
        with self._lock:
            self._kinds = {}
            self._loaded = False
        self._ensure_loaded()

    def get(self, kind: str) -> type[Connector] | None:
        self._ensure_loaded()
        return self._kinds.get(kind)

    def kinds(self) -> list[str]:
        self._ensure_loaded()
        return list(self._kinds)

    def classes(self) -> list[type[Connector]]:
        self._ensure_loaded()
        return list(self._kinds.values())

    def __contains__(self, kind: str) -> bool:
        self._ensure_loaded()
        return kind in self._kinds


registry = ConnectorRegistry()


def kind_choices() -> list[tuple[str, str]]:
    """(kind, label) of every registered connector: the choices of DataSource.kind (a callable, so plug-ins count)."""
    return [(cls.kind, cls.label or cls.kind) for cls in registry.classes()]


BUILTIN_FORMATS = [
    ("csv", "CSV"),
    ("jsonl", "JSONL"),
    ("parquet", "Parquet"),
]


def format_choices() -> list[tuple[str, str]]:
    """Dataset formats: the built-in ones plus any a plug-in connector reads or writes."""
    from django.utils.translation import gettext_lazy as _

    out = dict(BUILTIN_FORMATS)
    out["table"] = _("Database table")
    out["query"] = _("Database query")
    for cls in registry.classes():
        for fmt in (*cls.formats, *cls.sink_formats):
            out.setdefault(fmt, fmt)
    return list(out.items())
