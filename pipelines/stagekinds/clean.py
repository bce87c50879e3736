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

_FIELDS = {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1}


def _step(op: str, props: dict, required=()) -> dict:
    return {
        "type": "object",
        "properties": {"op": {"const": op}, **props},
        "required": ["op", *required],
        "additionalProperties": False,
    }


_STEP_SCHEMAS = {
    "strip_html": _step("strip_html", {"fields": _FIELDS}),
    "normalize_unicode": _step("normalize_unicode", {"fields": _FIELDS, "form": {"enum": ["NFC", "NFKC"]}}),
    "normalize_whitespace": _step("normalize_whitespace", {"fields": _FIELDS, "keep_newlines": {"type": "boolean"}}),
    "mask_pii": _step(
        "mask_pii",
        {
            "fields": _FIELDS,
            "types": {"type": "array", "items": {"enum": list(PII_ORDER)}, "minItems": 1, "uniqueItems": True},
            "replacement": {"type": "string", "maxLength": 50},
            "count_field": {"type": "string", "minLength": 1},
        },
    ),
    "rename": _step(
        "rename",
        {"mapping": {"type": "object", "additionalProperties": {"type": "string", "minLength": 1}, "minProperties": 1}},
        ["mapping"],
    ),
    "drop": _step("drop", {"fields": _FIELDS}, ["fields"]),
    "keep": _step("keep", {"fields": _FIELDS}, ["fields"]),
    "set": _step("set", {"values": {"type": "object", "minProperties": 1}}, ["values"]),
    "lowercase": _step("lowercase", {"fields": _FIELDS}),
}


class CleanKind(PerRecordStageKind):
    """Applies its steps in order to every record; text steps touch only string values of their fields."""

    name = "clean"
    label = _("Clean / map")
    description = _("Normalise whitespace and unicode, strip HTML, mask personal data, rename/drop fields.")
    config_schema = {
        "type": "object",
        "properties": {
            "text_field": {"type": "string", "minLength": 1, "default": "text"},
            "steps": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "properties": {"op": {"enum": sorted(_STEP_SCHEMAS)}},
                    "required": ["op"],
                },
            },
            "drop_empty": {"type": "boolean", "default": False},
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
