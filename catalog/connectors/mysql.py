# ruff: noqa: S608 - identifiers are checked (_IDENT) and backtick-quoted, values are parameters, and a
# user's query is the feature itself: one read-only statement (split_statements_check) in a READ ONLY transaction.
"""The `mysql` connector (MySQL and MariaDB): a table or a read-only query as a source, a table as a sink.

Driver: PyMySQL (pure Python: no client library or compiler on the machine, the same wheel everywhere;
its unbuffered `SSCursor` streams rows from the server as they are fetched).

Reading streams through an unbuffered (server-side) cursor, `batch_size` rows per fetch, inside a
READ ONLY transaction. Tables resume by a key: `options.key`, else the table's single-column primary
key (`WHERE key > last ORDER BY key`); a table without either, and a query, resume by OFFSET.
Writing loads rows into a session-private temporary table with multi-row INSERTs; `commit()` then
creates the target from it (CREATE TABLE ... AS SELECT, one atomic DDL statement) or, for an existing
table, empties it (mode "replace") and inserts the rows in one transaction: readers see the old rows
or all the new ones, and an abort or a crash leaves the target as it was.
"""

from __future__ import annotations

import json
import re
import ssl
import uuid
from collections.abc import Iterator

from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from .base import ConnectorError, Writer, canonical_json, dataset_ref, jsonable
from .database import DatabaseConnector, split_statements_check
from .netguard import resolve_public_host

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,63}$")
_MY_TYPES = {"int": "BIGINT", "float": "DOUBLE", "bool": "BOOLEAN", "json": "JSON", "string": "LONGTEXT"}
_NO_LIMIT = 18446744073709551615  # MySQL's way of saying OFFSET without LIMIT


def quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


class MySQLConnector(DatabaseConnector):
    kind = "mysql"
    label = gettext_lazy("MySQL / MariaDB")
    default_port = 3306
    identifier = _IDENT
    namespace_key = "database"
    not_a_table = gettext_lazy("%(location)r is not a table name (database.table, letters, digits and _).")
    config_schema = {
        "type": "object",
        "properties": {
            "host": {"type": "string", "minLength": 1, "maxLength": 255, "title": gettext_lazy("Host")},
            "port": {"type": "integer", "minimum": 1, "maximum": 65535, "default": 3306, "title": gettext_lazy("Port")},
            "database": {"type": "string", "pattern": _IDENT.pattern, "title": gettext_lazy("Database")},
            "user": {"type": "string", "minLength": 1, "maxLength": 80, "title": gettext_lazy("User")},
            "tls": {
                "enum": ["disable", "require", "verify-ca"],
                "default": "disable",
                "title": gettext_lazy("TLS mode"),
                "description": gettext_lazy(
                    "require: encrypt without checking the certificate; verify-ca: check it against the system CAs."
                ),
                "x-enumCodes": True,
            },
            "connect_timeout": {
                "type": "integer",
                "minimum": 1,
                "maximum": 60,
                "default": 5,
                "title": gettext_lazy("Connect timeout (s)"),
            },
            "read_timeout": {
                "type": "integer",
                "minimum": 1,
                "maximum": 3600,
                "default": 300,
                "title": gettext_lazy("Read timeout (s)"),
            },
        },
        "required": ["host", "database", "user"],
        "additionalProperties": False,
    }

    # ---- connection ----
    def connect(self, *, streaming: bool = False):
        import pymysql

        cfg = self.config
        port = int(cfg.get("port", 3306))
        address = resolve_public_host(cfg.get("host", ""), port)
        tls = cfg.get("tls", "disable")
        context = None
        if tls != "disable":
            context = ssl.create_default_context()
            context.check_hostname = False  # we dial the approved address, not the name
            if tls == "require":
                context.verify_mode = ssl.CERT_NONE
        try:
            return pymysql.connect(
                host=address,
                port=port,
                user=cfg["user"],
                password=self.secret.get("password") or "",
                database=cfg["database"],
                charset="utf8mb4",
                connect_timeout=int(cfg.get("connect_timeout", 5)),
                read_timeout=int(cfg.get("read_timeout", 300)),
                write_timeout=int(cfg.get("read_timeout", 300)),
                ssl=context,
                autocommit=False,
                local_infile=False,
                cursorclass=pymysql.cursors.SSCursor if streaming else pymysql.cursors.Cursor,
                program_name="dataflare-portal",
            )
        except pymysql.Error as exc:
            raise ConnectorError(
                _("Cannot connect to %(host)s:%(port)s/%(db)s: %(error)s")
                % {"host": cfg["host"], "port": port, "db": cfg["database"], "error": _clean(exc)}
            ) from None

    def server_version(self) -> str:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT VERSION()")
                version = cur.fetchone()[0]
        finally:
            conn.close()
        return f"{'MariaDB' if 'mariadb' in version.lower() else 'MySQL'} {version}"

    def table_sql(self, location: str) -> str:
        db, table = self.table_parts(location)
        return f"{quote(db)}.{quote(table)}"

    def _source_sql(self, ref) -> str:
        if ref.format == "query":
            return f"SELECT * FROM (\n{split_statements_check(ref.location)}\n) AS _df_q"
        return f"SELECT * FROM {self.table_sql(ref.location)}"

    def _primary_key(self, conn, location: str) -> str | None:
        db, table = self.table_parts(location)
        with conn.cursor() as cur:
            cur.execute(
                "SELECT column_name FROM information_schema.key_column_usage "
                "WHERE table_schema = %s AND table_name = %s AND constraint_name = 'PRIMARY'",
                (db, table),
            )
            rows = cur.fetchall()
        return rows[0][0] if len(rows) == 1 else None

    # ---- read ----
    def read(self, dataset, batch_size: int = 1000, start: dict | None = None) -> Iterator[tuple[list[dict], dict]]:
        ref = dataset_ref(dataset)
        self.check_format(ref.format)
        key = ref.options.get("key")
        if key is not None and not _IDENT.match(str(key)):
            raise ConnectorError(_("%(key)r is not a column name.") % {"key": key}, field="options")
        if ref.format == "query":
            split_statements_check(ref.location)
        else:
            self.table_parts(ref.location)
        return self._iter(ref, max(1, int(batch_size)), dict(start or {}), key)

    def _iter(self, ref, batch_size, start, key):
        import pymysql

        record_no = int(start.get("record", 0))
        conn = self.connect(streaming=True)
        exhausted = False
        cur = None
        try:
            if ref.format == "table" and not key:
                key = self._primary_key(conn, ref.location)
            params: tuple = ()
            if ref.format == "table" and key:
                where = ""
                if "key" in start:
                    where = f" WHERE {quote(key)} > %s"
                    params = (start["key"],)
                query = f"SELECT * FROM {self.table_sql(ref.location)}{where} ORDER BY {quote(key)}"
            else:
                key = None
                query = f"{self._source_sql(ref)} LIMIT {_NO_LIMIT} OFFSET {record_no}"
            cur = conn.cursor()
            try:
                cur.execute("START TRANSACTION READ ONLY")
                cur.execute(query, params or None)
            except pymysql.Error as exc:
                raise ConnectorError(
                    _("The source query failed: %(error)s") % {"error": _clean(exc)}, field="location"
                ) from None
            names = [d[0] for d in cur.description]
            while True:
                try:
                    rows = cur.fetchmany(batch_size)
                except pymysql.Error as exc:
                    raise ConnectorError(_("Reading failed: %(error)s") % {"error": _clean(exc)}) from None
                if not rows:
                    exhausted = True
                    break
                records = [dict(zip(names, map(jsonable, row), strict=True)) for row in rows]
                record_no += len(records)
                checkpoint = {"record": record_no}
                if key:
                    checkpoint["key"] = records[-1][key]
                yield records, checkpoint
        finally:
            if exhausted:
                conn.close()
            else:
                # Closing an unbuffered cursor would fetch every remaining row; drop the connection instead
                # (and tell the result it is over, so its finalizer does not read from the closed socket).
                result = getattr(cur, "_result", None) if cur is not None else None
                if result is not None:
                    result.unbuffered_active = False
                if cur is not None:
                    cur._result = None
                conn._result = None
                conn._force_close()

    def count(self, dataset) -> int:
        ref = dataset_ref(dataset)
        self.check_format(ref.format)
        return int(self._scalar(f"SELECT count(*) FROM ({self._source_sql(ref)}) AS _df_c", _("Counting failed")))

    def _scalar(self, query: str, what: str):
        import pymysql

        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("START TRANSACTION READ ONLY")
                cur.execute(query)
                return cur.fetchone()[0]
        except pymysql.Error as exc:
            raise ConnectorError(f"{what}: {_clean(exc)}", field="location") from None
        finally:
            conn.close()

    def infer_schema(self, dataset, sample_size: int = 200) -> list[dict]:
        import pymysql
        from pymysql.constants import FIELD_TYPE

        ref = dataset_ref(dataset)
        self.check_format(ref.format)
        kinds = {
            FIELD_TYPE.TINY: "int", FIELD_TYPE.SHORT: "int", FIELD_TYPE.LONG: "int", FIELD_TYPE.LONGLONG: "int",
            FIELD_TYPE.INT24: "int", FIELD_TYPE.YEAR: "int", FIELD_TYPE.FLOAT: "float", FIELD_TYPE.DOUBLE: "float",
            FIELD_TYPE.DECIMAL: "float", FIELD_TYPE.NEWDECIMAL: "float", FIELD_TYPE.JSON: "json",
        }  # fmt: skip
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("START TRANSACTION READ ONLY")
                cur.execute(f"{self._source_sql(ref)} LIMIT 0")
                return [
                    {"name": d[0], "type": kinds.get(d[1], "string"), "nullable": bool(d[6])} for d in cur.description
                ]
        except pymysql.Error as exc:
            raise ConnectorError(
                _("The source query failed: %(error)s") % {"error": _clean(exc)}, field="location"
            ) from None
        finally:
            conn.close()

    # ---- write ----
    def open_writer(self, location: str, format: str, fields: list[str] | None = None, **options) -> Writer:
        self.check_format(format, sink=True)
        mode = options.get("mode", "replace")
        if mode not in ("replace", "append"):
            raise ConnectorError(_("Unknown write mode %(mode)r (replace or append).") % {"mode": mode}, field="mode")
        return MySQLWriter(self, location, self.table_sql(location), fields, mode)


class MySQLWriter(Writer):
    """Multi-row INSERTs into a temporary table; commit() moves the rows into the target atomically."""

    def __init__(self, connector: MySQLConnector, location: str, target: str, fields, mode: str):
        super().__init__()
        self.location = location
        self.target = target
        self.fields = list(fields) if fields else None
        self.mode = mode
        self.conn = connector.connect()
        self.stage = quote(f"_df_stage_{uuid.uuid4().hex[:16]}")
        self._types: dict[str, str] | None = None
        self.size_bytes = 0
        db, table = connector.table_parts(location)
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s AND table_name = %s",
                (db, table),
            )
            self.target_exists = bool(cur.fetchone()[0])

    def _create_stage(self, records: list[dict]) -> None:
        from .base import infer_fields

        inferred = {f["name"]: f["type"] for f in infer_fields(records)}
        if self.fields is None:
            self.fields = list(inferred)
        if not self.fields:
            raise ConnectorError(_("Records have no fields."), field="fields")
        for f in self.fields:
            if not _IDENT.match(f):
                raise ConnectorError(_("%(name)r is not a column name.") % {"name": f}, field="fields")
        self._types = {f: _MY_TYPES[inferred.get(f, "string")] for f in self.fields}
        columns = ", ".join(f"{quote(f)} {self._types[f]} NULL" for f in self.fields)
        with self.conn.cursor() as cur:
            cur.execute(f"CREATE TEMPORARY TABLE {self.stage} ({columns}) ENGINE=InnoDB")

    def write(self, records: list[dict]) -> None:
        import pymysql

        if self.closed:
            raise ConnectorError(_("The writer is already closed."))
        if not records:
            return
        try:
            if self._types is None:
                self._create_stage(records)
            json_cols = {f for f, t in self._types.items() if t == "JSON"}
            rows = []
            for r in records:
                extra = set(r) - set(self.fields)
                if extra:
                    raise ConnectorError(
                        _("Record has fields not in the table: %(fields)s.") % {"fields": ", ".join(sorted(extra))}
                    )
                line = canonical_json(jsonable(r)) + "\n"
                self._hash.update(line.encode("utf-8"))
                self.size_bytes += len(line)
                rows.append(tuple(_my_value(r.get(f), f in json_cols) for f in self.fields))
            columns = ", ".join(quote(f) for f in self.fields)
            marks = ", ".join(["%s"] * len(self.fields))
            with self.conn.cursor() as cur:
                # PyMySQL folds executemany of INSERT ... VALUES into multi-row statements (bounded by packet size).
                cur.executemany(f"INSERT INTO {self.stage} ({columns}) VALUES ({marks})", rows)
        except pymysql.Error as exc:
            self.abort()
            raise ConnectorError(_("Loading rows failed: %(error)s") % {"error": _clean(exc)}) from None
        except BaseException:
            self.abort()
            raise
        self.records += len(records)

    def _result(self) -> dict:
        return {
            "location": self.location,
            "checksum": self._hash.hexdigest(),
            "records": self.records,
            "size_bytes": self.size_bytes,
        }

    def finish(self) -> dict:
        """The rows wait in the session's temporary table; commit() moves them into the target."""
        if self.closed:
            raise ConnectorError(_("The writer is already closed."))
        return self._result()

    def commit(self) -> dict:
        import pymysql

        if self.closed:
            raise ConnectorError(_("The writer is already closed."))
        try:
            with self.conn.cursor() as cur:
                if self._types is None:
                    if not self.target_exists:
                        raise ConnectorError(
                            _("Nothing was written and the target table does not exist."), field="fields"
                        )
                    if self.mode == "replace":
                        cur.execute(f"DELETE FROM {self.target}")
                else:
                    cols = ", ".join(quote(f) for f in self.fields)
                    if not self.target_exists:
                        # One DDL statement creates the table with its rows (atomic DDL in MariaDB 10.6+, MySQL 8).
                        cur.execute(f"CREATE TABLE {self.target} ENGINE=InnoDB AS SELECT {cols} FROM {self.stage}")
                    else:
                        cur.execute("START TRANSACTION")
                        if self.mode == "replace":
                            cur.execute(f"DELETE FROM {self.target}")
                        cur.execute(f"INSERT INTO {self.target} ({cols}) SELECT {cols} FROM {self.stage}")
            self.conn.commit()
        except pymysql.Error as exc:
            self.abort()
            raise ConnectorError(_("Publishing into the table failed: %(error)s") % {"error": _clean(exc)}) from None
        except BaseException:
            self.abort()
            raise
        self.closed = True
        self.conn.close()
        return self._result()

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.conn.rollback()
        except Exception:  # noqa: S110 - the session's temporary table dies with the connection anyway
            pass
        finally:
            try:
                self.conn.close()
            except Exception:  # noqa: S110
                pass


def _my_value(value, as_json: bool):
    if value is None:
        return None
    if as_json or isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return value


def _clean(exc: Exception) -> str:
    """The driver's message (PyMySQL errors carry the server's text, never the password)."""
    args = getattr(exc, "args", ())
    if len(args) >= 2:
        return f"({args[0]}) {args[1]}"
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
