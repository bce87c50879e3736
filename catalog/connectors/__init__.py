"""Connectors: a registry of data source kinds, each with a JSON-schema config, streaming reads and atomic writes.

Usage (see CONTRACTS.md)::

    conn = get_connector(source)                    # a DataSource row (secret decrypted here)
    for records, checkpoint in conn.read(dataset, batch_size=1000, start=None): ...
    w = conn.open_writer("out/v1.jsonl", "jsonl"); w.write(records); w.commit()
"""

from __future__ import annotations

import json

import jsonschema
from django.utils.translation import gettext as _

from dataflare_portal.core.jsonschema_messages import schema_error_message

from .base import (
    ConnectionResult,
    Connector,
    ConnectorError,
    DatasetRef,
    Writer,
    canonical_json,
    dataset_ref,
    infer_fields,
    jsonable,
)
from .files import FileConnector
from .postgres import PostgresConnector
from .registry import ENTRY_POINT_GROUP
from .registry import registry as connector_registry


def connector_kinds() -> list[str]:
    """The registered data source kinds: the built-ins, then those of `dataflare.connectors` entry points."""
    return connector_registry.kinds()


def connector_class(kind: str) -> type[Connector]:
    cls = connector_registry.get(kind)
    if cls is None:
        raise ConnectorError(
            _("Unsupported data source kind %(kind)r (supported: %(allowed)s).")
            % {"kind": kind, "allowed": ", ".join(connector_registry.kinds())},
            field="kind",
        )
    return cls


def validate_config(kind: str, config: dict) -> dict:
    """Check a config against the kind's schema and rules; returns it with defaults filled in.

    Raises ConnectorError whose `field` names the bad setting (e.g. "port", "root").
    """
    cls = connector_class(kind)
    if not isinstance(config, dict):
        raise ConnectorError(_("The configuration must be a JSON object."), field="config")
    validator = jsonschema.Draft202012Validator(cls.config_schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        path = [str(p) for p in error.absolute_path]
        if error.validator == "required":
            missing = [n for n in error.validator_value if n not in (error.instance or {})]
            path += missing[:1]
            message = _("%(field)s is required.") % {"field": missing[0] if missing else "config"}
        elif error.validator == "additionalProperties":
            extra = sorted(set(error.instance) - set(cls.config_schema.get("properties", {})))
            path += extra[:1]
            message = _("Unknown setting %(field)r.") % {"field": extra[0]} if extra else schema_error_message(error)
        else:
            message = f"{'.'.join(path) or 'config'}: {schema_error_message(error)}"
        raise ConnectorError(message, field=".".join(path) or "config")
    filled = {
        k: spec["default"]
        for k, spec in cls.config_schema.get("properties", {}).items()
        if isinstance(spec, dict) and "default" in spec and k not in config
    }
    filled.update(config)
    cls(filled).validate_config()
    return filled


def validate_location(kind: str, config: dict, fmt: str, location: str) -> None:
    """Check a dataset's format fits the kind and its location is well-formed (and stays below a file root)."""
    cls = connector_class(kind)
    if fmt not in cls.formats and fmt not in cls.sink_formats:
        raise ConnectorError(
            _("A %(kind)s data source does not support the %(format)r format (supported: %(allowed)s).")
            % {"kind": kind, "format": fmt, "allowed": ", ".join(dict.fromkeys(cls.formats + cls.sink_formats))},
            field="format",
        )
    try:
        conn = cls(validate_config(kind, config))
    except ConnectorError:
        return  # a bad source config is reported on the source, not on each of its datasets
    conn.validate_location(fmt, location)


def validate_secret(kind: str, secret: dict | None) -> dict:
    """Check credentials name only the kind's secret fields and are text; returns them without blanks."""
    cls = connector_class(kind)
    if secret is None:
        return {}
    if not isinstance(secret, dict):
        raise ConnectorError(_("The credentials must be a JSON object."), field="secret")
    for name, value in secret.items():
        if name not in cls.secret_fields:
            raise ConnectorError(
                _("A %(kind)s data source takes no credential %(name)r (it takes: %(allowed)s).")
                % {"kind": kind, "name": name, "allowed": ", ".join(cls.secret_fields) or "-"},
                field=f"secret.{name}",
            )
        if value is not None and not isinstance(value, str):
            raise ConnectorError(_("A credential must be text."), field=f"secret.{name}")
    return {k: v for k, v in secret.items() if v not in (None, "")}


def get_connector_for_kind(kind: str, config: dict, secret: dict | str | None = None) -> Connector:
    """A connector of `kind` from a plain config and a decrypted secret (dict, or a password string)."""
    cls = connector_class(kind)
    if isinstance(secret, str):
        secret = {"password": secret}
    return cls(validate_config(kind, config or {}), secret)


def secret_from_ciphertext(ciphertext: str) -> dict:
    """Decrypt a DataSource.secret_ciphertext into its dict (empty when none is stored)."""
    if not ciphertext:
        return {}
    from dataflare_portal.core.secrets import decrypt_secret

    plain = decrypt_secret(ciphertext)
    try:
        value = json.loads(plain)
    except ValueError:
        return {"password": plain}
    return value if isinstance(value, dict) else {"password": str(value)}


def get_connector(source) -> Connector:
    """The connector of a DataSource row, with its credentials decrypted in memory only."""
    return get_connector_for_kind(source.kind, source.config, secret_from_ciphertext(source.secret_ciphertext))


__all__ = [
    "ENTRY_POINT_GROUP",
    "ConnectionResult",
    "Connector",
    "ConnectorError",
    "DatasetRef",
    "FileConnector",
    "PostgresConnector",
    "Writer",
    "canonical_json",
    "connector_class",
    "connector_kinds",
    "dataset_ref",
    "get_connector",
    "get_connector_for_kind",
    "infer_fields",
    "jsonable",
    "secret_from_ciphertext",
    "validate_config",
    "connector_registry",
    "validate_location",
    "validate_secret",
]
