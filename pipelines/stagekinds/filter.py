"""The `filter` kind: drops (or quarantines) records that fail field rules."""

from __future__ import annotations

from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from dataflare_portal.core.userregex import UserRegexError, compile_user_regex, search_text

from .base import (
    PerRecordStageKind,
    Quarantine,
    StageConfigError,
    StageContext,
    StageResult,
    join_path,
    tagged_union_schema,
    validate_schema,
)
from .textutil import detect_language

_FIELD = {"type": "string", "minLength": 1, "title": _("Field"), "description": _("The text field when absent.")}
_NUMBER = {"type": "number"}
_RULE_SCHEMAS = {
    "required": {
        "type": "object",
        "title": _("Required fields"),
        "properties": {
            "type": {"const": "required"},
            "fields": {"type": "array", "items": _FIELD, "minItems": 1, "title": _("Fields")},
            "allow_empty": {"type": "boolean", "title": _("Allow empty values")},
        },
        "required": ["type", "fields"],
        "additionalProperties": False,
    },
    "length": {
        "type": "object",
        "title": _("Length (characters)"),
        "properties": {
            "type": {"const": "length"},
            "field": _FIELD,
            "min": {"type": "integer", "minimum": 0, "title": _("Minimum")},
            "max": {"type": "integer", "minimum": 0, "title": _("Maximum")},
        },
        "required": ["type"],
        "additionalProperties": False,
    },
    "regex": {
        "type": "object",
        "title": _("Regular expression"),
        "properties": {
            "type": {"const": "regex"},
            "field": _FIELD,
            "pattern": {"type": "string", "minLength": 1, "title": _("Pattern")},
            "mode": {
                "enum": ["include", "exclude"],
                "title": _("Mode"),
                "x-enumLabels": {"include": _("keep records that match"), "exclude": _("drop records that match")},
            },
            "ignore_case": {"type": "boolean", "title": _("Ignore case")},
        },
        "required": ["type", "pattern"],
        "additionalProperties": False,
    },
    "language": {
        "type": "object",
        "title": _("Language"),
        "properties": {
            "type": {"const": "language"},
            "field": _FIELD,
            "allow": {
                "type": "array",
                "items": {
                    "enum": ["zh", "en", "other"],
                    "x-enumLabels": {"zh": _("Chinese"), "en": _("English"), "other": _("other languages")},
                },
                "minItems": 1,
                "uniqueItems": True,
                "title": _("Allowed languages"),
            },
        },
        "required": ["type", "allow"],
        "additionalProperties": False,
    },
    "range": {
        "type": "object",
        "title": _("Numeric range"),
        "properties": {
            "type": {"const": "range"},
            "field": {"type": "string", "minLength": 1, "title": _("Field")},
            "min": {**_NUMBER, "title": _("Minimum")},
            "max": {**_NUMBER, "title": _("Maximum")},
        },
        "required": ["type", "field"],
        "additionalProperties": False,
    },
}


class FilterKind(PerRecordStageKind):
    """Keeps records that pass every rule, in order; the first failing rule names the reason."""

    name = "filter"
    label = _("Filter")
    description = _("Drop records by required fields, length, regex, language or numeric range.")
    config_schema = {
        "type": "object",
        "properties": {
            "text_field": {
                "type": "string",
                "minLength": 1,
                "default": "text",
                "title": _("Text field"),
                "description": _("The field rules check when they name none."),
            },
            "on_fail": {
                "enum": ["drop", "quarantine"],
                "default": "drop",
                "title": _("A failing record"),
                "x-enumLabels": {"drop": _("is dropped (counted as filtered)"), "quarantine": _("is quarantined")},
            },
            "rules": {
                "type": "array",
                "title": _("Rules"),
                "items": {
                    "type": "object",
                    "properties": {"type": {"enum": sorted(_RULE_SCHEMAS)}},
                    "required": ["type"],
                },
            },
        },
        "required": ["rules"],
        "additionalProperties": False,
    }

    def form_schema(self) -> dict:
        return tagged_union_schema(self.config_schema, "rules", "type", _RULE_SCHEMAS)

    def check_config(self, config: dict) -> None:
        for i, rule in enumerate(config["rules"]):
            path = join_path("$", "rules", i)
            validate_schema(_RULE_SCHEMAS[rule["type"]], rule, path)
            if rule["type"] == "regex":
                try:
                    compile_user_regex(rule["pattern"], ignore_case=bool(rule.get("ignore_case")))
                except UserRegexError as exc:
                    raise StageConfigError(str(exc), join_path(path, "pattern")) from None
            if rule["type"] in ("length", "range") and "min" in rule and "max" in rule and rule["min"] > rule["max"]:
                raise StageConfigError(gettext("min is greater than max."), join_path(path, "min"))
            if rule["type"] == "length" and "min" not in rule and "max" not in rule:
                raise StageConfigError(gettext("Give min, max or both."), path)

    def _compile(self, config: dict):
        text_field = config.get("text_field", "text")
        checks = []
        for rule in config["rules"]:
            kind = rule["type"]
            field = rule.get("field", text_field)
            if kind == "required":
                checks.append(_required(rule["fields"], rule.get("allow_empty", False)))
            elif kind == "length":
                checks.append(_length(field, rule.get("min"), rule.get("max")))
            elif kind == "regex":
                # RE2, never `re`: a user's "^(a+)+$" must not backtrack for hours on a long record.
                pattern = compile_user_regex(rule["pattern"], ignore_case=bool(rule.get("ignore_case")))
                checks.append(_regex(field, pattern, rule.get("mode", "include")))
            elif kind == "language":
                checks.append(_language(field, frozenset(rule["allow"])))
            elif kind == "range":
                checks.append(_range(field, rule.get("min"), rule.get("max")))
        return checks

    def process(self, records: list[dict], ctx: StageContext) -> StageResult:
        config = self.defaults(ctx.config)
        checks = self._compile(config)
        quarantine = config["on_fail"] == "quarantine"
        kept: list[dict] = []
        failed: list[Quarantine] = []
        filtered = 0
        for index, record in enumerate(records):
            for check in checks:
                failure = check(record)
                if failure is not None:
                    if quarantine:
                        failed.append(Quarantine(index=index, code=failure[0], reason=failure[1], record=record))
                    else:
                        filtered += 1
                    break
            else:
                kept.append(record)
        return StageResult(records=kept, filtered=filtered, quarantined=failed)


def _text(record: dict, field: str) -> str | None:
    value = record.get(field)
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _required(fields, allow_empty):
    def check(record):
        for name in fields:
            value = record.get(name)
            if value is None or (not allow_empty and isinstance(value, str) and not value.strip()):
                return "required", gettext("Field %(field)s is missing or empty.") % {"field": name}
        return None

    return check


def _length(field, lo, hi):
    def check(record):
        n = len(_text(record, field) or "")
        if lo is not None and n < lo:
            return "too_short", gettext("%(field)s has %(n)d characters, fewer than %(min)d.") % {
                "field": field,
                "n": n,
                "min": lo,
            }
        if hi is not None and n > hi:
            return "too_long", gettext("%(field)s has %(n)d characters, more than %(max)d.") % {
                "field": field,
                "n": n,
                "max": hi,
            }
        return None

    return check


def _regex(field, pattern, mode):
    def check(record):
        found = search_text(pattern, _text(record, field) or "")
        if mode == "include" and not found:
            return "regex_mismatch", gettext("%(field)s does not match %(pattern)s.") % {
                "field": field,
                "pattern": pattern.pattern,
            }
        if mode == "exclude" and found:
            return "regex_excluded", gettext("%(field)s matches the excluded pattern %(pattern)s.") % {
                "field": field,
                "pattern": pattern.pattern,
            }
        return None

    return check


def _language(field, allowed):
    def check(record):
        lang = detect_language(_text(record, field) or "")
        if lang not in allowed:
            return "language", gettext("%(field)s is in language %(lang)s, not allowed.") % {
                "field": field,
                "lang": lang,
            }
        return None

    return check


def _range(field, lo, hi):
    def check(record):
        value = record.get(field)
        try:
            number = float(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or number != number:  # NaN never falls inside a range
            return "not_a_number", gettext("%(field)s is not a number.") % {"field": field}
        if (lo is not None and number < lo) or (hi is not None and number > hi):
            return "out_of_range", gettext("%(field)s = %(value)s is outside [%(min)s, %(max)s].") % {
                "field": field,
                "value": value,
                "min": "-∞" if lo is None else lo,
                "max": "∞" if hi is None else hi,
            }
        return None

    return check
