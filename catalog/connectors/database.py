"""What the database connectors (PostgreSQL, MySQL/MariaDB) share: a server found by host and port
through the SSRF guard, a password as the one secret, a table (`namespace.table`) or a read-only
query as a source and a table as a sink, and a connection test that reports the server's version.
"""

from __future__ import annotations

import abc
import ipaddress
import re
import time

from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from .base import ConnectionResult, Connector, ConnectorError
from .netguard import resolve_public_host


def split_statements_check(query: str) -> str:
    """The query without trailing semicolons; refuses more than one statement (quotes and comments aware)."""
    text = (query or "").strip()
    first = _strip_comments(text).strip().split(None, 1)
    if first and first[0].rstrip("(").lower() not in ("select", "with", "values", "table"):
        raise ConnectorError(_("Only a read-only query (SELECT, WITH, VALUES or TABLE) is allowed."), field="location")
    i, n, last_code = 0, len(text), -1
    while i < n:
        ch = text[i]
        if ch == "'" or ch == '"':
            j = i + 1
            while j < n:
                if text[j] == ch:
                    if j + 1 < n and text[j + 1] == ch:  # doubled quote escapes itself
                        j += 2
                        continue
                    break
                j += 1
            i = j + 1
            last_code = i - 1
            continue
        if text.startswith("--", i):
            nl = text.find("\n", i)
            i = n if nl < 0 else nl + 1
            continue
        if text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
            continue
        if ch == "$":
            m = re.match(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$", text[i:])
            if m:
                tag = m.group(0)
                end = text.find(tag, i + len(tag))
                i = n if end < 0 else end + len(tag)
                last_code = i - 1
                continue
        if ch == ";":
            rest = text[i + 1 :]
            if _strip_comments(rest).strip(" \t\r\n;"):
                raise ConnectorError(_("The query must be a single statement."), field="location")
            if last_code < 0:
                raise ConnectorError(_("The query is empty."), field="location")
            return text[: last_code + 1]
        if not ch.isspace():
            last_code = i
        i += 1
    if not text or last_code < 0:
        raise ConnectorError(_("The query is empty."), field="location")
    # Trailing comments are cut: the query is wrapped in a subquery and a `--` would eat its closing paren.
    return text[: last_code + 1]


def _strip_comments(text: str) -> str:
    return re.sub(r"--[^\n]*|/\*.*?\*/", "", text, flags=re.S)


class DatabaseConnector(Connector, abc.ABC):
    formats = ("table", "query")
    sink_formats = ("table",)
    secret_fields = ("password",)
    secret_labels = {"password": gettext_lazy("Password")}

    default_port: int = 0
    # A table location is `namespace.table` or a bare `table` in the config's namespace.
    identifier: re.Pattern = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")
    namespace_key = ""  # the config key naming the default namespace ("schema", "database")
    namespace_default = ""
    not_a_table = gettext_lazy("%(location)r is not a table name.")

    def validate_config(self) -> None:
        """Refuse a private IP literal now; names are checked at every connect (they may resolve differently later)."""
        host = str(self.config.get("host", "")).strip().strip("[]")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return
        resolve_public_host(host, int(self.config.get("port", self.default_port)))

    def validate_location(self, fmt: str, location: str) -> None:
        if fmt == "query":
            split_statements_check(location)
        else:
            self.table_parts(location)

    def table_parts(self, location: str) -> tuple[str, str]:
        """(namespace, table) of a `namespace.table` or bare `table` location (the config's namespace by default)."""
        parts = (location or "").strip().split(".")
        if len(parts) == 1:
            parts = [self.config.get(self.namespace_key, self.namespace_default), parts[0]]
        if len(parts) != 2 or not all(self.identifier.match(p) for p in parts):
            raise ConnectorError(self.not_a_table % {"location": location}, field="location")
        return parts[0], parts[1]

    @abc.abstractmethod
    def server_version(self) -> str:
        """The server's name and version, from a fresh connection (raises ConnectorError)."""

    def test_connection(self) -> ConnectionResult:
        started = time.perf_counter()
        try:
            version = self.server_version()
        except ConnectorError as exc:
            return ConnectionResult(False, exc.message, (time.perf_counter() - started) * 1000)
        return ConnectionResult(True, version, (time.perf_counter() - started) * 1000)
