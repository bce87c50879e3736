"""The `postgresql` connector: a table or a read-only query as a source, a table as a bulk-loaded sink.

Reading uses a server-side (named) cursor, one chunk at a time. Checkpoints count records and,
for tables, carry the position: with `options.key` (a unique, indexed column) the next read is
`WHERE key > last ORDER BY key` (stable while the table changes); without it rows are ordered by
`ctid` (stable only while the table is not updated/vacuumed full). Queries resume by OFFSET.
Writing COPYs into a temporary table inside one transaction, then replaces (or appends to) the
target in the same transaction: readers see all rows or none, and a crash rolls everything back.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import psycopg
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from psycopg import sql
from psycopg.types.json import Jsonb

from .base import ConnectorError, Writer, canonical_json, dataset_ref, jsonable
from .database import DatabaseConnector, split_statements_check
from .netguard import resolve_public_host

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")
_PG_TYPES = {"int": "bigint", "float": "double precision", "bool": "boolean", "json": "jsonb", "string": "text"}
_TYPE_NAMES = {
    "int2": "int", "int4": "int", "int8": "int", "oid": "int",
    "float4": "float", "float8": "float", "numeric": "float",
    "bool": "bool", "json": "json", "jsonb": "json",
}  # fmt: skip


class PostgresConnector(DatabaseConnector):
    kind = "postgresql"
    label = gettext_lazy("PostgreSQL")
    default_port = 5432
    identifier = _IDENT
    namespace_key, namespace_default = "schema", "public"
    not_a_table = gettext_lazy("%(location)r is not a table name (schema.table, letters, digits and _).")
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

    def server_version(self) -> str:
        with self.connect() as conn:
            return "PostgreSQL " + conn.execute("SHOW server_version").fetchone()[0]

    def table_identifier(self, location: str) -> sql.Identifier:
        return sql.Identifier(*self.table_parts(location))

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
