"""The `postgresql` connector: a table or a read-only query as a source, a table as a bulk-loaded sink.

Reading uses a server-side (named) cursor, one chunk at a time. Checkpoints count records and,
for tables, carry the position: with `options.key` (a unique, indexed column) the next read is
`WHERE key > last ORDER BY key` (stable while the table changes); without it rows are ordered by
`ctid` (stable only while the table is not updated/vacuumed full). Queries resume by OFFSET.
Writing COPYs into a temporary table inside one transaction, then replaces (or appends to) the
target in the same transaction: readers see all rows or none, and a crash rolls everything back.
"""

from __future__ import annotations

import ipaddress
import re
import time
import uuid
from collections.abc import Iterator

import psycopg
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from psycopg import sql
from psycopg.types.json import Jsonb

from .base import ConnectionResult, Connector, ConnectorError, Writer, canonical_json, dataset_ref, jsonable
from .netguard import resolve_public_host

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")
_PG_TYPES = {"int": "bigint", "float": "double precision", "bool": "boolean", "json": "jsonb", "string": "text"}
_TYPE_NAMES = {
    "int2": "int", "int4": "int", "int8": "int", "oid": "int",
    "float4": "float", "float8": "float", "numeric": "float",
    "bool": "bool", "json": "json", "jsonb": "json",
}  # fmt: skip


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


class PostgresConnector(Connector):
    kind = "postgresql"
    label = gettext_lazy("PostgreSQL")
    secret_labels = {"password": gettext_lazy("Password")}
    formats = ("table", "query")
    sink_formats = ("table",)
    secret_fields = ("password",)
    config_schema = {
        "type": "object",
        "properties": {
            "host": {"type": "string", "minLength": 1, "maxLength": 255, "title": gettext_lazy("Host")},
            "port": {"type": "integer", "minimum": 1, "maximum": 65535, "default": 5432, "title": gettext_lazy("Port")},
            "database": {"type": "string", "minLength": 1, "maxLength": 63, "title": gettext_lazy("Database")},
            "user": {"type": "string", "minLength": 1, "maxLength": 63, "title": gettext_lazy("User")},
            "sslmode": {
                "enum": ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"],
                "default": "prefer",
                "title": gettext_lazy("TLS mode"),
                "description": gettext_lazy("PostgreSQL's own `sslmode` values."),
                "x-enumCodes": True,
            },
            "schema": {
                "type": "string",
                "pattern": _IDENT.pattern,
                "default": "public",
                "title": gettext_lazy("Schema"),
                "description": gettext_lazy("For table names given without a schema."),
            },
            "connect_timeout": {
                "type": "integer",
                "minimum": 1,
                "maximum": 60,
                "default": 5,
                "title": gettext_lazy("Connect timeout (s)"),
            },
            "statement_timeout_ms": {
                "type": "integer",
                "minimum": 0,
                "default": 0,
                "title": gettext_lazy("Statement timeout (ms)"),
                "description": gettext_lazy("0: no limit."),
            },
        },
        "required": ["host", "database", "user"],
        "additionalProperties": False,
    }

    def validate_config(self) -> None:
        """Refuse a private IP literal now; names are checked at every connect (they may resolve differently later)."""
        host = str(self.config.get("host", "")).strip().strip("[]")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return
        resolve_public_host(host, int(self.config.get("port", 5432)))

    def validate_location(self, fmt: str, location: str) -> None:
        if fmt == "query":
            split_statements_check(location)
        else:
            self.table_parts(location)

    # ---- connection ----
    def connect(self, **kwargs) -> psycopg.Connection:
        cfg = self.config
        port = int(cfg.get("port", 5432))
        hostaddr = resolve_public_host(cfg.get("host", ""), port)
        params = {
            "host": cfg["host"],
            "hostaddr": hostaddr,
            "port": port,
            "dbname": cfg["database"],
            "user": cfg["user"],
            "sslmode": cfg.get("sslmode", "prefer"),
            "connect_timeout": int(cfg.get("connect_timeout", 5)),
            "application_name": "dataflare-portal",
        }
        if self.secret.get("password"):
            params["password"] = self.secret["password"]
        try:
            return psycopg.connect(**params, **kwargs)
        except psycopg.Error as exc:
            raise ConnectorError(
                _("Cannot connect to %(host)s:%(port)s/%(db)s: %(error)s")
                % {"host": cfg["host"], "port": port, "db": cfg["database"], "error": _clean(exc)}
            ) from None

    def test_connection(self) -> ConnectionResult:
        started = time.perf_counter()
        try:
            with self.connect() as conn:
                version = conn.execute("SHOW server_version").fetchone()[0]
        except ConnectorError as exc:
            return ConnectionResult(False, exc.message, (time.perf_counter() - started) * 1000)
        return ConnectionResult(True, f"PostgreSQL {version}", (time.perf_counter() - started) * 1000)

    def table_identifier(self, location: str) -> sql.Identifier:
        return sql.Identifier(*self.table_parts(location))

    def table_parts(self, location: str) -> tuple[str, str]:
        """(schema, table) of a `schema.table` or bare `table` location (the config's schema by default)."""
        parts = (location or "").strip().split(".")
        if len(parts) == 1:
            parts = [self.config.get("schema", "public"), parts[0]]
        if len(parts) != 2 or not all(_IDENT.match(p) for p in parts):
            raise ConnectorError(
                _("%(location)r is not a table name (schema.table, letters, digits and _).") % {"location": location},
                field="location",
            )
        return parts[0], parts[1]

    def _source_sql(self, ref) -> sql.Composable:
        if ref.format == "query":
            return sql.SQL("SELECT * FROM (\n{}\n) AS _df_q").format(sql.SQL(split_statements_check(ref.location)))
        return sql.SQL("SELECT * FROM {}").format(self.table_identifier(ref.location))

    def _begin_read(self, conn: psycopg.Connection) -> None:
        conn.read_only = True
        timeout = int(self.config.get("statement_timeout_ms", 0))
        if timeout:
            conn.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(timeout)))

    # ---- read ----
    def read(self, dataset, batch_size: int = 1000, start: dict | None = None) -> Iterator[tuple[list[dict], dict]]:
        ref = dataset_ref(dataset)
        self.check_format(ref.format)
        batch_size = max(1, int(batch_size))
        start = start or {}
        record_no = int(start.get("record", 0))
        key = ref.options.get("key")
        if key is not None and not _IDENT.match(str(key)):
            raise ConnectorError(_("%(key)r is not a column name.") % {"key": key}, field="options")
        if ref.format == "query":
            query = sql.SQL("{} OFFSET {}").format(self._source_sql(ref), sql.Literal(record_no))
            pos_col = None
        elif key:
            where = sql.SQL("")
            if "key" in start:
                where = sql.SQL(" WHERE {} > {}").format(sql.Identifier(key), sql.Literal(start["key"]))
            query = sql.SQL("SELECT * FROM {}{} ORDER BY {}").format(
                self.table_identifier(ref.location), where, sql.Identifier(key)
            )
            pos_col = key
        else:
            where = sql.SQL("")
            if "ctid" in start:
                where = sql.SQL(" WHERE ctid > {}::tid").format(sql.Literal(start["ctid"]))
            query = sql.SQL("SELECT ctid::text AS _df_ctid, * FROM {}{} ORDER BY ctid").format(
                self.table_identifier(ref.location), where
            )
            pos_col = "_df_ctid"
        return self._iter(query, batch_size, record_no, pos_col, key)

    def _iter(self, query, batch_size, record_no, pos_col, key):
        with self.connect() as conn:
            self._begin_read(conn)
            with conn.transaction(), conn.cursor(name=f"df_read_{uuid.uuid4().hex[:12]}") as cur:
                try:
                    cur.execute(query)
                except psycopg.Error as exc:
                    raise ConnectorError(
                        _("The source query failed: %(error)s") % {"error": _clean(exc)}, field="location"
                    ) from None
                while True:
                    rows = cur.fetchmany(batch_size)
                    if not rows:
                        break
                    names = [d.name for d in cur.description]
                    records = [dict(zip(names, map(jsonable, row), strict=True)) for row in rows]
                    record_no += len(records)
                    checkpoint = {"record": record_no}
                    if pos_col == "_df_ctid":
                        checkpoint["ctid"] = records[-1]["_df_ctid"]
                        for r in records:
                            del r["_df_ctid"]
                    elif pos_col:
                        checkpoint["key"] = records[-1][key]
                    yield records, checkpoint

    def count(self, dataset) -> int:
        ref = dataset_ref(dataset)
        self.check_format(ref.format)
        with self.connect() as conn:
            self._begin_read(conn)
            try:
                query = sql.SQL("SELECT count(*) FROM ({}) AS _df_c").format(self._source_sql(ref))
                return int(conn.execute(query).fetchone()[0])
            except psycopg.Error as exc:
                raise ConnectorError(
                    _("Counting failed: %(error)s") % {"error": _clean(exc)}, field="location"
                ) from None

    def infer_schema(self, dataset, sample_size: int = 200) -> list[dict]:
        ref = dataset_ref(dataset)
        self.check_format(ref.format)
        with self.connect() as conn:
            self._begin_read(conn)
            try:
                cur = conn.execute(sql.SQL("{} LIMIT 0").format(self._source_sql(ref)))
            except psycopg.Error as exc:
                raise ConnectorError(
                    _("The source query failed: %(error)s") % {"error": _clean(exc)}, field="location"
                ) from None
            fields = []
            for col in cur.description:
                info = conn.adapters.types.get(col.type_code)
                fields.append({"name": col.name, "type": _TYPE_NAMES.get(info.name if info else "", "string"),
                               "nullable": True})  # fmt: skip
            if ref.format == "table":
                schema_name, table = self.table_parts(ref.location)
                not_null = {
                    row[0]
                    for row in conn.execute(
                        "SELECT column_name FROM information_schema.columns "
                        "WHERE table_schema = %s AND table_name = %s AND is_nullable = 'NO'",
                        (schema_name, table),
                    )
                }
                for f in fields:
                    f["nullable"] = f["name"] not in not_null
            return fields

    # ---- write ----
    def open_writer(self, location: str, format: str, fields: list[str] | None = None, **options) -> Writer:
        self.check_format(format, sink=True)
        mode = options.get("mode", "replace")
        if mode not in ("replace", "append"):
            raise ConnectorError(_("Unknown write mode %(mode)r (replace or append).") % {"mode": mode}, field="mode")
        return PostgresWriter(self, location, self.table_identifier(location), fields, mode)


class PostgresWriter(Writer):
    """COPY into a temp table in one open transaction; commit() moves the rows into the target atomically."""

    def __init__(self, connector: PostgresConnector, location: str, target: sql.Identifier, fields, mode: str):
        super().__init__()
        self.location = location
        self.target = target
        self.fields = list(fields) if fields else None
        self.mode = mode
        self.conn = connector.connect(autocommit=False)
        self.stage = sql.Identifier(f"_df_stage_{uuid.uuid4().hex[:16]}")
        self._types: dict[str, str] | None = None
        self.size_bytes = 0
        self.target_exists = bool(
            self.conn.execute("SELECT to_regclass(%s) IS NOT NULL", (target.as_string(self.conn),)).fetchone()[0]
        )

    def _create_stage(self, records: list[dict]) -> None:
        from .base import infer_fields

        inferred = {f["name"]: f["type"] for f in infer_fields(records)}
        if self.fields is None:
            self.fields = list(inferred)
        if self.target_exists:
            self.conn.execute(
                sql.SQL("CREATE TEMP TABLE {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP").format(
                    self.stage, self.target
                )
            )
            cols = {
                r[0]: r[1]
                for r in self.conn.execute(
                    sql.SQL("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                            "WHERE attrelid = {}::regclass AND attnum > 0 AND NOT attisdropped").format(
                        sql.Literal(self.target.as_string(self.conn)))
                )
            }  # fmt: skip
            missing = [f for f in self.fields if f not in cols]
            if missing:
                raise ConnectorError(
                    _("Target table has no column(s) %(columns)s.") % {"columns": ", ".join(missing)}, field="fields"
                )
            self._types = {f: cols[f] for f in self.fields}
        else:
            self._types = {f: _PG_TYPES[inferred.get(f, "string")] for f in self.fields}
            columns = sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(f), sql.SQL(self._types[f])) for f in self.fields
            )
            self.conn.execute(sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(self.stage, columns))

    def write(self, records: list[dict]) -> None:
        if self.closed:
            raise ConnectorError(_("The writer is already closed."))
        if not records:
            return
        try:
            if self._types is None:
                self._create_stage(records)
            json_cols = {f for f, t in self._types.items() if t in ("json", "jsonb")}
            copy_sql = sql.SQL("COPY {} ({}) FROM STDIN").format(
                self.stage, sql.SQL(", ").join(map(sql.Identifier, self.fields))
            )
            with self.conn.cursor() as cur, cur.copy(copy_sql) as copy:
                for r in records:
                    extra = set(r) - set(self.fields)
                    if extra:
                        raise ConnectorError(
                            _("Record has fields not in the table: %(fields)s.") % {"fields": ", ".join(sorted(extra))}
                        )
                    line = canonical_json(jsonable(r)) + "\n"
                    self._hash.update(line.encode("utf-8"))
                    self.size_bytes += len(line)
                    copy.write_row(
                        [
                            Jsonb(r.get(f)) if f in json_cols and r.get(f) is not None else _pg_value(r.get(f))
                            for f in self.fields
                        ]  # fmt: skip
                    )
        except psycopg.Error as exc:
            self.abort()
            raise ConnectorError(_("Loading rows failed: %(error)s") % {"error": _clean(exc)}) from None
        except ConnectorError:
            self.abort()
            raise
        self.records += len(records)

    def finish(self) -> dict:
        """The rows wait in the temp table of the open transaction; commit() moves them into the target."""
        if self.closed:
            raise ConnectorError(_("The writer is already closed."))
        return {
            "location": self.location,
            "checksum": self._hash.hexdigest(),
            "records": self.records,
            "size_bytes": self.size_bytes,
        }

    def commit(self) -> dict:
        if self.closed:
            raise ConnectorError(_("The writer is already closed."))
        try:
            if self._types is None:
                if not self.target_exists:
                    raise ConnectorError(_("Nothing was written and the target table does not exist."), field="fields")
                if self.mode == "replace":
                    self.conn.execute(sql.SQL("DELETE FROM {}").format(self.target))
            else:
                cols = sql.SQL(", ").join(map(sql.Identifier, self.fields))
                if not self.target_exists:
                    self.conn.execute(
                        sql.SQL("CREATE TABLE {} AS SELECT {} FROM {} WITH NO DATA").format(
                            self.target, cols, self.stage
                        )
                    )
                elif self.mode == "replace":
                    self.conn.execute(sql.SQL("DELETE FROM {}").format(self.target))
                self.conn.execute(
                    sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(self.target, cols, cols, self.stage)
                )
            self.conn.commit()
        except psycopg.Error as exc:
            self.abort()
            raise ConnectorError(_("Publishing into the table failed: %(error)s") % {"error": _clean(exc)}) from None
        except BaseException:
            self.abort()
            raise
        self.closed = True
        self.conn.close()
        return {
            "location": self.location,
            "checksum": self._hash.hexdigest(),
            "records": self.records,
            "size_bytes": self.size_bytes,
        }

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.conn.rollback()
        except psycopg.Error:
            pass
        finally:
            self.conn.close()


def _pg_value(value):
    if isinstance(value, (dict, list)):
        return Jsonb(value)
    return value


def _clean(exc: Exception) -> str:
    """The first line of a driver error (no connection string, so never a password)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
