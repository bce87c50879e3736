"""The `clean` kind: an ordered list of steps (HTML, unicode, whitespace, PII, field mapping)."""

from __future__ import annotations

from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from .base import (
    PerRecordStageKind,
    StageConfigError,
    StageContext,
    StageResult,
    join_path,
    tagged_union_schema,
    validate_schema,
)
from .textutil import PII_ORDER, mask_pii, normalize_unicode, normalize_whitespace, strip_html

_FIELDS = {
    "type": "array",
    "items": {"type": "string", "minLength": 1},
    "minItems": 1,
    "title": _("Fields"),
    "description": _("The text field when absent."),
}
_NAMED_FIELDS = {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "title": _("Fields")}


def _step(op: str, title, props: dict, required=()) -> dict:
    return {
        "type": "object",
        "title": title,
        "properties": {"op": {"const": op}, **props},
        "required": ["op", *required],
        "additionalProperties": False,
    }


_STEP_SCHEMAS = {
    "strip_html": _step("strip_html", _("Strip HTML"), {"fields": _FIELDS}),
    "normalize_unicode": _step(
        "normalize_unicode",
        _("Normalise Unicode"),
        {
            "fields": _FIELDS,
            "form": {"enum": ["NFC", "NFKC"], "title": _("Normal form"), "default": "NFKC", "x-enumCodes": True},
        },
    ),
    "normalize_whitespace": _step(
        "normalize_whitespace",
        _("Normalise whitespace"),
        {"fields": _FIELDS, "keep_newlines": {"type": "boolean", "title": _("Keep paragraph breaks"), "default": True}},
    ),
    "mask_pii": _step(
        "mask_pii",
        _("Mask personal data"),
        {
            "fields": _FIELDS,
            "types": {
                "type": "array",
                "items": {
                    "enum": list(PII_ORDER),
                    "x-enumLabels": {
                        "email": _("email addresses"),
                        "id_card": _("resident ID numbers"),
                        "ip": _("IP addresses"),
                        "phone": _("phone numbers"),
                    },
                },
                "minItems": 1,
                "uniqueItems": True,
                "title": _("What to mask"),
                "description": _("All kinds when none is chosen."),
            },
            "replacement": {
                "type": "string",
                "maxLength": 50,
                "title": _("Replacement"),
                "description": _("`{type}` stands for the kind of data masked."),
                "default": "[{type}]",
            },
            "count_field": {
                "type": "string",
                "minLength": 1,
                "title": _("Count field"),
                "description": _("A field that receives how many values were masked (none when absent)."),
            },
        },
    ),
    "rename": _step(
        "rename",
        _("Rename fields"),
        {
            "mapping": {
                "type": "object",
                "additionalProperties": {"type": "string", "minLength": 1},
                "minProperties": 1,
                "title": _("Old name → new name"),
            }
        },
        ["mapping"],
    ),
    "drop": _step("drop", _("Drop fields"), {"fields": _NAMED_FIELDS}, ["fields"]),
    "keep": _step("keep", _("Keep only fields"), {"fields": _NAMED_FIELDS}, ["fields"]),
    "set": _step(
        "set",
        _("Set field values"),
        {"values": {"type": "object", "minProperties": 1, "title": _("Field → value")}},
        ["values"],
    ),
    "lowercase": _step("lowercase", _("Lowercase"), {"fields": _FIELDS}),
}


class CleanKind(PerRecordStageKind):
    """Applies its steps in order to every record; text steps touch only string values of their fields."""

    name = "clean"
    label = _("Clean / map")
    description = _("Normalise whitespace and unicode, strip HTML, mask personal data, rename/drop fields.")
    config_schema = {
        "type": "object",
        "properties": {
            "text_field": {
                "type": "string",
                "minLength": 1,
                "default": "text",
                "title": _("Text field"),
                "description": _("The field steps work on when they name none."),
            },
            "steps": {
                "type": "array",
                "minItems": 1,
                "title": _("Steps"),
                "description": _("Applied in order."),
                "items": {
                    "type": "object",
                    "properties": {"op": {"enum": sorted(_STEP_SCHEMAS)}},
                    "required": ["op"],
                },
            },
            "drop_empty": {
                "type": "boolean",
                "default": False,
                "title": _("Drop records whose text ends up empty"),
            },
        },
        "required": ["steps"],
        "additionalProperties": False,
    }

    def form_schema(self) -> dict:
        return tagged_union_schema(self.config_schema, "steps", "op", _STEP_SCHEMAS)

    def check_config(self, config: dict) -> None:
        for i, step in enumerate(config["steps"]):
            path = join_path("$", "steps", i)
            validate_schema(_STEP_SCHEMAS[step["op"]], step, path)
            if step["op"] == "rename":
                targets = list(step["mapping"].values())
                if len(set(targets)) != len(targets):
                    raise StageConfigError(
                        gettext("Two fields are renamed to the same name."), join_path(path, "mapping")
                    )

    def _compile(self, config: dict):
        text_field = config.get("text_field", "text")
        funcs = []
        for step in config["steps"]:
            op = step["op"]
            fields = step.get("fields", [text_field])
            if op == "strip_html":
                funcs.append(_on_text(fields, strip_html))
            elif op == "normalize_unicode":
                form = step.get("form", "NFKC")
                funcs.append(_on_text(fields, lambda s, form=form: normalize_unicode(s, form)))
            elif op == "normalize_whitespace":
                keep = step.get("keep_newlines", True)
                funcs.append(_on_text(fields, lambda s, keep=keep: normalize_whitespace(s, keep_newlines=keep)))
            elif op == "lowercase":
                funcs.append(_on_text(fields, str.lower))
            elif op == "mask_pii":
                funcs.append(
                    _mask(
                        fields,
                        tuple(step.get("types", PII_ORDER)),
                        step.get("replacement", "[{type}]"),
                        step.get("count_field"),
                    )
                )
            elif op == "rename":
                funcs.append(_rename(dict(step["mapping"])))
            elif op == "drop":
                names = tuple(step["fields"])
                funcs.append(lambda r, names=names: {k: v for k, v in r.items() if k not in names})
            elif op == "keep":
                names = tuple(step["fields"])
                funcs.append(lambda r, names=names: {k: r[k] for k in names if k in r})
            elif op == "set":
                values = dict(step["values"])
                funcs.append(lambda r, values=values: {**r, **values})
        return funcs, text_field

    def process(self, records: list[dict], ctx: StageContext) -> StageResult:
        config = self.defaults(ctx.config)
        funcs, text_field = self._compile(config)
        drop_empty = config["drop_empty"]
        out = []
        filtered = 0
        for record in records:
            for func in funcs:
                record = func(record)
            if drop_empty and not (isinstance(record.get(text_field), str) and record[text_field].strip()):
                filtered += 1
                continue
            out.append(record)
        return StageResult(records=out, filtered=filtered)


def _on_text(fields, func):
    def apply(record):
        changed = None
        for name in fields:
            value = record.get(name)
            if isinstance(value, str):
                new = func(value)
                if new is not value:
                    if changed is None:
                        changed = dict(record)  # never mutate the caller's record
                    changed[name] = new
        return record if changed is None else changed

    return apply


def _mask(fields, types, replacement, count_field):
    def apply(record):
        out = dict(record)
        total = 0
        for name in fields:
            value = out.get(name)
            if isinstance(value, str):
                out[name], n = mask_pii(value, types, replacement)
                total += n
        if count_field:
            out[count_field] = total
        return out

    return apply


def _rename(mapping):
    def apply(record):
        return {mapping.get(k, k): v for k, v in record.items()}

    return apply
