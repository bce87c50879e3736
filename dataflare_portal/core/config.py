"""Typed operational settings: default < environment (.env/settings) < config.json < database overrides.

`config_get(key)` returns the effective value. Every process keeps the resolved values in memory
together with a version number read from the shared cache (Redis, or the file cache every
process on the machine shares); `config_set` bumps that version after its transaction commits,
so a change made in one process is seen by every other one on its next read, without restart.
Apps may add their own keys with `register_setting(...)` in their AppConfig.ready().
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _

__all__ = [
    "ConfigError",
    "Setting",
    "config_all",
    "config_get",
    "config_reset",
    "config_set",
    "config_get_many",
    "register_setting",
    "registry",
]

SOURCE_DEFAULT = "default"
SOURCE_ENV = "env"
SOURCE_FILE = "file"
SOURCE_DATABASE = "database"
SOURCE_LABELS = {
    SOURCE_DEFAULT: _("built-in default"),
    SOURCE_ENV: _("environment"),
    SOURCE_FILE: _("config.json"),
    SOURCE_DATABASE: _("system-config page"),
}
VERSION_CACHE_KEY = "dataflare:config:version"


class ConfigError(ValidationError):
    """A config value that does not fit its setting; `field` names the key."""

    def __init__(self, key: str, message):
        super().__init__({key: [message]})
        self.key = key


@dataclass(frozen=True)
class Setting:
    """One operational setting: its type, default, bounds and description."""

    key: str
    type: str  # int | float | bool | str | choice | hostport
    default: Any
    description: Promise | str
    label: Promise | str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    # Words each choice is shown with (the stored value stays the code).
    choice_labels: dict = field(default_factory=dict)
    read_only: bool = False
    # Name of a Django setting supplying the environment value (else PORTAL_<KEY> from settings.CONFIG_ENV).
    settings_name: str | None = None
    group: str = "general"
    extra: dict = field(default_factory=dict)

    # ---- parsing and validation -----------------------------------------------------------
    def coerce(self, value: Any) -> Any:
        """Turn a JSON or text value into this setting's type, or raise ConfigError naming the key."""
        kind = self.type
        try:
            if kind == "int":
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError
                value = int(str(value).strip()) if isinstance(value, str) else int(value)
            elif kind == "float":
                if isinstance(value, bool):
                    raise ValueError
                value = float(str(value).strip()) if isinstance(value, str) else float(value)
                if value != value or value in (float("inf"), float("-inf")):
                    raise ValueError
            elif kind == "bool":
                if isinstance(value, str):
                    text = value.strip().lower()
                    if text in {"1", "true", "yes", "on"}:
                        value = True
                    elif text in {"0", "false", "no", "off"}:
                        value = False
                    else:
                        raise ValueError
                elif not isinstance(value, bool):
                    raise ValueError
            elif kind in {"str", "choice", "hostport"}:
                if not isinstance(value, str):
                    raise ValueError
                value = value.strip()
        except (TypeError, ValueError):
            raise ConfigError(self.key, _("Enter a valid %(type)s value.") % {"type": self.type_label}) from None
        self.validate(value)
        return value

    def validate(self, value: Any) -> None:
        if self.minimum is not None and value < self.minimum:
            raise ConfigError(self.key, _("Must be at least %(min)s.") % {"min": self.minimum})
        if self.maximum is not None and value > self.maximum:
            raise ConfigError(self.key, _("Must be at most %(max)s.") % {"max": self.maximum})
        if self.type == "choice" and value not in self.choices:
            raise ConfigError(self.key, _("Choose one of: %(choices)s.") % {"choices": ", ".join(self.choices)})
        if self.type == "str" and len(value) > 500:
            raise ConfigError(self.key, _("At most 500 characters."))
        if self.type == "hostport" and not _HOSTPORT.match(value):
            raise ConfigError(self.key, _("Enter host:port, for example 127.0.0.1:8001."))

    def display(self, value: Any) -> str:
        """A value as people read it: a choice by its label, true/false as yes/no."""
        if self.type == "choice":
            return str(self.choice_labels.get(value, value))
        if self.type == "bool":
            return str(_("yes") if value else _("no"))
        return str(value)

    @property
    def type_label(self) -> str:
        return {"int": "integer", "float": "number", "bool": "true/false", "hostport": "host:port"}.get(
            self.type, "text"
        )

    def json_schema(self) -> dict:
        base = {"int": "integer", "float": "number", "bool": "boolean"}.get(self.type, "string")
        schema: dict[str, Any] = {"type": base}
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        if self.choices:
            schema["enum"] = list(self.choices)
        return schema


_HOSTPORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,253}):([0-9]{1,5})$")

registry: dict[str, Setting] = {}


def register_setting(setting: Setting) -> Setting:
    """Add a setting to the registry (idempotent per key)."""
    registry[setting.key] = setting
    return setting


# ---- The portal's settings ----------------------------------------------------------------
for _s in (
    Setting(
        "dashboard_refresh_seconds",
        "int",
        60,
        _(
            "How often the statistics dashboard refreshes its numbers and charts, in seconds "
            "(run pages follow a live run every 2 s)."
        ),
        label=_("Dashboard refresh interval (s)"),
        minimum=2,
        maximum=3600,
        group="dashboard",
    ),
    Setting(
        "history_default_window",
        "choice",
        "today",
        _("Time range the statistics dashboard (KPIs, token usage, history) opens with."),
        label=_("Default dashboard time range"),
        choices=("today", "7d", "30d"),
        choice_labels={"today": _("Today"), "7d": _("Last 7 days"), "30d": _("Last 30 days")},
        group="dashboard",
    ),
    Setting(
        "raw_retention_days",
        "int",
        7,
        _("Days raw metric events are kept before pruning (rollups are kept longer)."),
        label=_("Raw metrics retention (days)"),
        minimum=1,
        maximum=3650,
        group="retention",
    ),
    Setting(
        "minute_rollup_retention_days",
        "int",
        14,
        _("Days minute-level rollups are kept; hour rollups are compacted later, day rollups stay."),
        label=_("Minute rollup retention (days)"),
        minimum=1,
        maximum=3650,
        group="retention",
    ),
    Setting(
        "hour_rollup_retention_days",
        "int",
        35,
        _(
            "Days hour-level rollups are kept; older hours are compacted into their day rows "
            "(never before raw events and minute rollups are pruned)."
        ),
        label=_("Hour rollup retention (days)"),
        minimum=1,
        maximum=3650,
        group="retention",
    ),
    Setting(
        "alert_default_window_minutes",
        "int",
        15,
        _("Evaluation window new alert rules start with, in minutes."),
        label=_("Alert rule default window (min)"),
        minimum=1,
        maximum=10080,
        group="alerts",
    ),
    Setting(
        "alert_default_cooldown_minutes",
        "int",
        30,
        _(
            "Minimum time between two notifications of the same alert, in minutes: within it a de-escalation "
            "or a repeated escalation is not sent; firing, resolution and a worse severity always are."
        ),
        label=_("Alert notification cooldown (min)"),
        minimum=0,
        maximum=10080,
        group="alerts",
    ),
    Setting(
        "alert_error_rate_warning_pct",
        "float",
        5.0,
        _("Warning threshold a failure-rate rule saved without thresholds takes, in percent."),
        label=_("Failure rate warning (%)"),
        minimum=0,
        maximum=100,
        group="alerts",
    ),
    Setting(
        "alert_error_rate_critical_pct",
        "float",
        20.0,
        _("Critical threshold a failure-rate rule saved without thresholds takes, in percent."),
        label=_("Failure rate critical (%)"),
        minimum=0,
        maximum=100,
        group="alerts",
    ),
    Setting(
        "model_endpoint_default",
        "hostport",
        "127.0.0.1:8001",
        _("gRPC endpoint new model configurations start with (`host:port`)."),
        label=_("Default model endpoint"),
        settings_name="MODEL_SERVER_URL",
        group="models",
    ),
    Setting(
        "model_timeout_seconds",
        "float",
        30.0,
        _("Deadline of one model call that new model configurations start with, in seconds."),
        label=_("Model call timeout (s)"),
        minimum=0.1,
        maximum=3600,
        group="models",
    ),
    Setting(
        "batch_size_default",
        "int",
        1000,
        _("Records per batch new pipelines start with (and imported templates that set none)."),
        label=_("Default batch size"),
        minimum=1,
        maximum=100000,
        group="execution",
    ),
    Setting(
        "auth_mode",
        "choice",
        "none",
        _(
            "How users sign in (`none`: single built-in operator; `local`: users and roles; `oidc`: an OpenID "
            "Connect provider). Set in the environment."
        ),
        label=_("Authentication mode"),
        choices=("none", "local", "oidc"),
        choice_labels={"none": _("single operator"), "local": _("users and roles"), "oidc": _("OpenID Connect")},
        read_only=True,
        settings_name="AUTH_MODE",
        group="security",
    ),
):
    register_setting(_s)


# ---- Resolution ---------------------------------------------------------------------------
_lock = threading.Lock()
_memo: dict[str, Any] = {"version": None, "file": None, "values": None}


def _file_stamp() -> tuple[str, float, int] | None:
    path = settings.CONFIG_FILE
    try:
        stat = path.stat()
    except (OSError, TypeError):
        return None
    return str(path), stat.st_mtime, stat.st_size


def _read_file() -> dict:
    try:
        with open(settings.CONFIG_FILE, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        import logging

        logging.getLogger(__name__).error("config.json cannot be read: %s", exc)
        return {}
    return data if isinstance(data, dict) else {}


def _env_value(setting: Setting) -> tuple[bool, Any]:
    if setting.settings_name and hasattr(settings, setting.settings_name):
        return True, getattr(settings, setting.settings_name)
    env = getattr(settings, "CONFIG_ENV", {}) or {}
    if setting.key in env:
        return True, env[setting.key]
    return False, None


def _db_overrides() -> dict[str, Any]:
    from .models import SystemConfig

    try:
        return dict(SystemConfig.objects.values_list("key", "value"))
    except Exception:  # before migrations (check, collectstatic) the table may not exist yet
        import logging

        logging.getLogger(__name__).debug("config table unavailable", exc_info=True)
        return {}


def _resolve() -> dict[str, tuple[Any, str]]:
    """Effective (value, source) of every registered setting; invalid layers are skipped and logged."""
    import logging

    log = logging.getLogger(__name__)
    file_values = _read_file()
    db_values = _db_overrides()
    resolved = {}
    for key, setting in registry.items():
        value, source = setting.default, SOURCE_DEFAULT
        layers = [(SOURCE_ENV, *_env_value(setting)), (SOURCE_FILE, key in file_values, file_values.get(key))]
        if not setting.read_only:
            layers.append((SOURCE_DATABASE, key in db_values, db_values.get(key)))
        for layer, present, raw in layers:
            if not present:
                continue
            try:
                value, source = setting.coerce(raw), layer
            except ConfigError:
                log.warning("ignoring invalid %s value for config key %s", layer, key)
        resolved[key] = (value, source)
    return resolved


def _version() -> int:
    try:
        return int(cache.get(VERSION_CACHE_KEY) or 0)
    except Exception:  # an unreachable cache must not take pages down: resolve every time instead
        return -1


def _bump_version() -> None:
    try:
        cache.add(VERSION_CACHE_KEY, 0, timeout=None)
        cache.incr(VERSION_CACHE_KEY)
    except ValueError:
        cache.set(VERSION_CACHE_KEY, 1, timeout=None)


def _effective() -> dict[str, tuple[Any, str]]:
    version, stamp = _version(), _file_stamp()
    with _lock:
        if version != -1 and _memo["values"] is not None and _memo["version"] == version and _memo["file"] == stamp:
            return _memo["values"]
    values = _resolve()
    # Inside a transaction the rows read may still roll back: use them, but do not keep them.
    if not connection.in_atomic_block:
        with _lock:
            _memo.update(version=version, file=stamp, values=values)
    return values


def config_get(key: str) -> Any:
    """The effective value of a setting (KeyError for an unknown key)."""
    if key not in registry:
        raise KeyError(key)
    return _effective()[key][0]


def config_get_many(*keys: str) -> dict[str, Any]:
    """The effective values of several settings, resolved once (KeyError for an unknown key)."""
    effective = _effective()
    return {key: effective[key][0] for key in keys}


def config_all() -> list[dict[str, Any]]:
    """Every setting with its effective value, source and metadata, in registry order."""
    effective = _effective()
    rows = []
    for key, setting in registry.items():
        value, source = effective[key]
        rows.append({"key": key, "setting": setting, "value": value, "source": source})
    return rows


def _invalidate_local() -> None:
    with _lock:
        _memo.update(version=None, values=None)


def config_set(*, key: str, value: Any, actor) -> Any:
    """Validate and store a database override of a setting, audited; returns the stored value."""
    from .models import AuditAction, SystemConfig
    from .services import audit_record

    setting = registry.get(key)
    if setting is None:
        raise ConfigError("key", _("Unknown setting %(key)s.") % {"key": key})
    if setting.read_only:
        raise ConfigError(key, _("This setting is read-only here; set it in the environment."))
    new = setting.coerce(value)
    before_value = config_get(key)
    with transaction.atomic():
        row = SystemConfig.objects.select_for_update().filter(key=key).first()
        old_override = row.value if row is not None else None
        if row is None:
            row = SystemConfig(key=key)
        row.value = new
        row.updated_by = actor if getattr(actor, "is_authenticated", False) else None
        row.full_clean()
        row.save()
        audit_record(
            actor=actor,
            action=AuditAction.CONFIG,
            instance=row,
            before={"value": before_value, "override": old_override},
            after={"value": new, "override": new},
            message=f"{key} = {json.dumps(new)}",
        )
        transaction.on_commit(_bump_version)
    _invalidate_local()
    return new


def config_reset(*, key: str, actor) -> Any:
    """Remove the database override of a setting, audited; returns the value now in effect."""
    from .models import AuditAction, SystemConfig
    from .services import audit_record

    if key not in registry:
        raise ConfigError("key", _("Unknown setting %(key)s.") % {"key": key})
    if registry[key].read_only:
        raise ConfigError(key, _("This setting is read-only here; set it in the environment."))
    with transaction.atomic():
        row = SystemConfig.objects.select_for_update().filter(key=key).first()
        # Audited even when there was no override, so every accepted write leaves one entry.
        audit_record(
            actor=actor,
            action=AuditAction.CONFIG,
            object_type=SystemConfig._meta.label_lower,
            object_id=str(row.pk) if row is not None else "",
            object_repr=key,
            before={"override": row.value if row is not None else None},
            after={"override": None},
            message=f"{key} reset",
        )
        if row is not None:
            row.delete()
        transaction.on_commit(_bump_version)
    _invalidate_local()
    return config_get(key)
